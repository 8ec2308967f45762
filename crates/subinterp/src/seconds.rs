//! The one rule for a number of seconds a user gives (a timeout, a deadline, a wait),
//! shared by the built-in module, the Python package and the command line, each of which
//! words the refusal its own way.

use std::time::Duration;

/// The longest accepted, in seconds: `threading.TIMEOUT_MAX` on Linux (about 292 years).
/// Any clock reading plus this much is still a clock reading.
pub const MAX_SECONDS: f64 = 9_223_372_036.0;

/// Why a number of seconds is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SecondsError {
    /// Text that is not a number.
    NotANumber,
    /// Negative, or NaN.
    Negative,
    /// Zero where a positive number is needed.
    Zero,
    /// More than [`MAX_SECONDS`], infinity included.
    TooLarge,
}

/// `secs` as a duration: zero or more, at most [`MAX_SECONDS`].
pub fn non_negative(secs: f64) -> Result<Duration, SecondsError> {
    if secs.is_nan() || secs < 0.0 {
        return Err(SecondsError::Negative);
    }
    if secs > MAX_SECONDS {
        return Err(SecondsError::TooLarge);
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `secs` as a duration: more than zero, at most [`MAX_SECONDS`].
pub fn positive(secs: f64) -> Result<Duration, SecondsError> {
    let duration = non_negative(secs)?;
    if duration.is_zero() {
        return Err(SecondsError::Zero);
    }
    Ok(duration)
}

/// A positive number of seconds written as text (surrounding blanks ignored).
pub fn parse_positive(text: &str) -> Result<Duration, SecondsError> {
    let secs: f64 = text.trim().parse().map_err(|_| SecondsError::NotANumber)?;
    positive(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule() {
        assert_eq!(non_negative(0.0), Ok(Duration::ZERO));
        assert_eq!(positive(0.0), Err(SecondsError::Zero));
        // 1e-10 s rounds down to zero nanoseconds: nothing to wait for.
        assert_eq!(positive(1e-10), Err(SecondsError::Zero));
        assert_eq!(positive(1.5), Ok(Duration::from_millis(1500)));
        for bad in [-1.0, -0.5, f64::NEG_INFINITY, f64::NAN] {
            assert_eq!(non_negative(bad), Err(SecondsError::Negative), "{bad}");
            assert_eq!(positive(bad), Err(SecondsError::Negative), "{bad}");
        }
        assert_eq!(
            positive(MAX_SECONDS),
            Ok(Duration::from_secs(9_223_372_036))
        );
        for huge in [MAX_SECONDS + 1.0, 1e20, f64::INFINITY, f64::MAX] {
            assert_eq!(non_negative(huge), Err(SecondsError::TooLarge), "{huge}");
        }
        // Any clock reading can take the longest.
        assert!(std::time::Instant::now()
            .checked_add(positive(MAX_SECONDS).unwrap())
            .is_some());
        assert_eq!(parse_positive(" 2.5 "), Ok(Duration::from_millis(2500)));
        assert_eq!(parse_positive("1e3"), Ok(Duration::from_secs(1000)));
        assert_eq!(parse_positive("nan"), Err(SecondsError::Negative));
        assert_eq!(parse_positive("inf"), Err(SecondsError::TooLarge));
        assert_eq!(parse_positive("-0"), Err(SecondsError::Zero));
        for text in ["soon", "", "1s", "0x10"] {
            assert_eq!(
                parse_positive(text),
                Err(SecondsError::NotANumber),
                "{text:?}"
            );
        }
    }
}
