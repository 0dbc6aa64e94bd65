//! The names an event carries, as types that cannot hold an invalid value: a `RequestId`, a
//! `TenantId`, a `Route` or a `Model` exists only through `parse` (or serde, which calls it), so
//! nothing past the edge checks them again.

use std::borrow::{Borrow, Cow};
use std::fmt;
use std::ops::Deref;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Largest `request_id`, in characters.
pub const MAX_REQUEST_ID_CHARS: usize = 128;
/// Largest tenant, route or model name, in characters.
pub const MAX_IDENTIFIER_CHARS: usize = 255;

/// Why a value is not a valid name, as a field error says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invalid(pub &'static str);

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Invalid {}

/// The join key with the response; also the Kafka record key. 1 to 128 letters, digits,
/// `-`, `_`, `.` or `:`.
fn check_request_id(value: &str) -> Result<(), Invalid> {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':');
    let valid_text = value.bytes().all(allowed);
    // Every allowed character is one byte; the characters are counted only for an id that
    // holds others, to say which rule it breaks first.
    let len = if valid_text {
        value.len()
    } else {
        value.chars().count()
    };
    if len == 0 {
        return Err(Invalid("must not be empty"));
    }
    if len > MAX_REQUEST_ID_CHARS {
        return Err(Invalid("must be at most 128 characters"));
    }
    if !valid_text {
        return Err(Invalid(
            "may contain only letters, digits, '-', '_', '.' and ':'",
        ));
    }
    Ok(())
}

/// Tenant, route and model names form the `tenant|route|model` key of `llm.metrics`, so `|`
/// is refused, as are control characters and blank names.
fn check_identifier(value: &str) -> Result<(), Invalid> {
    if value.trim().is_empty() {
        return Err(Invalid("must not be empty"));
    }
    // No more bytes than the bound means no more characters either.
    if value.len() > MAX_IDENTIFIER_CHARS && value.chars().count() > MAX_IDENTIFIER_CHARS {
        return Err(Invalid("must be at most 255 characters"));
    }
    if value.chars().any(|c| c == '|' || c.is_control()) {
        return Err(Invalid("must not contain '|' or control characters"));
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $check:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            pub fn parse(value: impl Into<String>) -> Result<Self, Invalid> {
                let value = value.into();
                $check(&value)?;
                Ok(Self(value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }

            /// Stands in for a field that failed, so that the rules of the other fields still
            /// run and every failing field is named; an event holding it is never handed out.
            pub(crate) fn placeholder() -> Self {
                Self(String::new())
            }
        }

        impl FromStr for $name {
            type Err = Invalid;

            fn from_str(value: &str) -> Result<Self, Invalid> {
                Self::parse(value)
            }
        }

        impl Deref for $name {
            type Target = str;

            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = Cow::<'de, str>::deserialize(deserializer)?;
                $check(&text).map_err(serde::de::Error::custom)?;
                Ok(Self(text.into_owned()))
            }
        }
    };
}

name_type!(
    /// A call's id, chosen by the application: the join key and the Kafka record key.
    RequestId,
    check_request_id
);
name_type!(
    /// The tenant a call belongs to; with API keys, the key's tenant.
    TenantId,
    check_identifier
);
name_type!(
    /// The application's own name for where a call comes from (an endpoint, a feature).
    Route,
    check_identifier
);
name_type!(
    /// The model a call asked for, as its provider names it.
    Model,
    check_identifier
);
name_type!(
    /// Who serves the model (`openai`, `anthropic`, `aws.bedrock`), as the OpenTelemetry
    /// GenAI conventions' `gen_ai.provider.name` names it.
    Provider,
    check_identifier
);
name_type!(
    /// Why a call failed, as a low-cardinality class (`timeout`, `rate_limit`, `500`), the
    /// way OpenTelemetry's `error.type` is.
    ErrorType,
    check_identifier
);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_request_id_takes_the_characters_of_ids_and_nothing_else() {
        for good in ["a", "req-1", "0f.3_a:b", &"x".repeat(128)] {
            assert!(RequestId::parse(good).is_ok(), "{good}");
        }
        for (bad, why) in [
            ("", "must not be empty"),
            (
                "a b",
                "may contain only letters, digits, '-', '_', '.' and ':'",
            ),
            (
                "t|r",
                "may contain only letters, digits, '-', '_', '.' and ':'",
            ),
            (&"x".repeat(129), "must be at most 128 characters"),
        ] {
            assert_eq!(RequestId::parse(bad), Err(Invalid(why)), "{bad}");
        }
    }

    #[test]
    fn a_name_is_not_blank_has_no_bar_and_no_control_characters() {
        assert!(Route::parse("/chat completions").is_ok());
        assert!(Model::parse("gpt-4o-2024-08-06").is_ok());
        assert_eq!(TenantId::parse("  "), Err(Invalid("must not be empty")));
        assert_eq!(
            Route::parse("/a|b"),
            Err(Invalid("must not contain '|' or control characters"))
        );
        assert_eq!(
            Model::parse("m\u{0}"),
            Err(Invalid("must not contain '|' or control characters"))
        );
        let long = "é".repeat(256);
        assert_eq!(
            TenantId::parse(long),
            Err(Invalid("must be at most 255 characters"))
        );
        assert!(
            TenantId::parse("é".repeat(255)).is_ok(),
            "characters, not bytes"
        );
    }

    #[test]
    fn serde_refuses_what_parse_refuses() {
        let id: RequestId = serde_json::from_str(r#""r-1""#).unwrap();
        assert_eq!(id, "r-1");
        assert_eq!(serde_json::to_string(&id).unwrap(), r#""r-1""#);
        let refused = serde_json::from_str::<TenantId>(r#""a|b""#).unwrap_err();
        assert!(refused.to_string().contains("'|'"), "{refused}");
    }

    proptest! {
        #[test]
        fn parsing_is_the_same_through_serde(text in ".{0,300}") {
            let json = serde_json::to_string(&text).unwrap();
            prop_assert_eq!(
                Route::parse(text.as_str()).ok(),
                serde_json::from_str::<Route>(&json).ok()
            );
            prop_assert_eq!(
                RequestId::parse(text.as_str()).ok(),
                serde_json::from_str::<RequestId>(&json).ok()
            );
        }
    }
}
