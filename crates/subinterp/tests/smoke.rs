mod common;
use subinterp::Value;

#[test]
fn smoke() {
    let a = common::isolated();
    assert_eq!(a.eval("1 + 1").unwrap(), Value::Int(2));
    a.exec("x = 40").unwrap();
    assert_eq!(a.eval("x + 2").unwrap(), Value::Int(42));
    let err = a.eval("1/0").unwrap_err();
    println!("{err}\n{}", err.as_python().unwrap().traceback);
    assert_eq!(a.call("math:sqrt", (16.0,)).unwrap(), Value::Float(4.0));
    a.close().unwrap();
    assert!(matches!(a.eval("1"), Err(subinterp::Error::Closed)));
}
