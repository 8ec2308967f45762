"""Tasks over wheels isolated interpreters refuse: orjson, pydantic-core, lxml, regex."""

import os

import orjson
import regex
from lxml import etree
from pydantic_core import SchemaValidator, ValidationError, core_schema

PERSON = SchemaValidator(
    core_schema.typed_dict_schema(
        {
            "name": core_schema.typed_dict_field(core_schema.str_schema()),
            "age": core_schema.typed_dict_field(core_schema.int_schema(ge=0)),
        }
    )
)


def pid():
    return os.getpid()


def dumps(obj):
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)


def validate(data):
    try:
        return PERSON.validate_python(data)
    except ValidationError as e:
        return [err["type"] for err in e.errors()]


def xml_total(n):
    items = "".join(f'<item price="{i}.5"/>' for i in range(n))
    return float(etree.fromstring(f"<shop>{items}</shop>").xpath("sum(//item/@price)"))


def capitals(text):
    return regex.findall(r"\p{Lu}", text)


def everything(n):
    person = validate({"name": f"Ünit{n}", "age": str(n)})
    return orjson.loads(dumps({"person": person, "xml": xml_total(n), "caps": capitals(person["name"])}))
