use super::Value;
/// placeholder
pub fn from_value<T: serde::de::DeserializeOwned>(_value: Value) -> crate::Result<T> {
    Err(crate::Error::Conversion("todo".into()))
}
