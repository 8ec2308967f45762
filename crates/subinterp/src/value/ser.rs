use super::Value;
/// placeholder
pub fn to_value<T: serde::Serialize + ?Sized>(_value: &T) -> crate::Result<Value> {
    Err(crate::Error::Conversion("todo".into()))
}
