//! TLS and SASL for every Kafka client, from the environment variables operators set.
//!
//! | variable | librdkafka property |
//! |---|---|
//! | `KAFKA_SECURITY_PROTOCOL` | `security.protocol`: `plaintext`, `ssl`, `sasl_plaintext`, `sasl_ssl` |
//! | `KAFKA_SASL_MECHANISM` | `sasl.mechanism`: `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512` |
//! | `KAFKA_SASL_USERNAME` | `sasl.username` |
//! | `KAFKA_SASL_PASSWORD` (or `KAFKA_SASL_PASSWORD_FILE`) | `sasl.password` |
//! | `KAFKA_SSL_CA_LOCATION` | `ssl.ca.location` |
//! | `KAFKA_SSL_CERTIFICATE_LOCATION`, `KAFKA_SSL_KEY_LOCATION` | `ssl.certificate.location`, `ssl.key.location` |
//! | `KAFKA_SSL_KEY_PASSWORD` | `ssl.key.password` |
//! | `KAFKA_SSL_ENDPOINT_IDENTIFICATION` | `ssl.endpoint.identification.algorithm`: `https`, `none` |
//!
//! Settings that contradict each other are refused at start-up, all at once, rather than
//! left for the first connection to fail on.

use metrics_core::settings::Env;

const PROTOCOLS: [&str; 4] = ["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"];
const MECHANISMS: [&str; 3] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

/// The librdkafka properties the security variables set, in a fixed order.
pub(super) fn from_env(env: &mut Env) -> Vec<(String, String)> {
    let value = |env: &Env, name: &str| env.raw(&[name]).map(|(_, v)| v);
    let mut properties = Vec::new();
    let mut set = |key: &str, value: String| properties.push((key.to_owned(), value));

    let protocol = value(env, "KAFKA_SECURITY_PROTOCOL").map(|p| p.to_lowercase());
    if let Some(protocol) = &protocol {
        if !PROTOCOLS.contains(&protocol.as_str()) {
            env.invalid(format!(
                "KAFKA_SECURITY_PROTOCOL={protocol:?}: must be one of {}",
                PROTOCOLS.join(", ")
            ));
        }
        set("security.protocol", protocol.clone());
    }
    let protocol = protocol.as_deref().unwrap_or("plaintext");
    let sasl = protocol.starts_with("sasl_");
    let tls = protocol.ends_with("ssl");

    let mechanism = value(env, "KAFKA_SASL_MECHANISM").map(|m| m.to_uppercase());
    let username = value(env, "KAFKA_SASL_USERNAME");
    let password = match (
        value(env, "KAFKA_SASL_PASSWORD"),
        value(env, "KAFKA_SASL_PASSWORD_FILE"),
    ) {
        (Some(_), Some(_)) => {
            env.invalid("set KAFKA_SASL_PASSWORD or KAFKA_SASL_PASSWORD_FILE, not both");
            None
        }
        (Some(password), None) => Some(password),
        (None, Some(file)) => match std::fs::read_to_string(&file) {
            Ok(text) => Some(text.trim_end_matches(['\r', '\n']).to_owned()),
            Err(e) => {
                env.invalid(format!("KAFKA_SASL_PASSWORD_FILE={file:?}: {e}"));
                None
            }
        },
        (None, None) => None,
    };
    if sasl {
        match &mechanism {
            None => env.invalid(format!(
                "KAFKA_SECURITY_PROTOCOL={protocol} needs KAFKA_SASL_MECHANISM ({})",
                MECHANISMS.join(", ")
            )),
            Some(m) if !MECHANISMS.contains(&m.as_str()) => env.invalid(format!(
                "KAFKA_SASL_MECHANISM={m:?}: must be one of {}",
                MECHANISMS.join(", ")
            )),
            Some(m) => set("sasl.mechanism", m.clone()),
        }
        match (username, password) {
            (Some(username), Some(password)) => {
                set("sasl.username", username);
                set("sasl.password", password);
            }
            _ => env
                .invalid("SASL needs both KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD (or _FILE)"),
        }
    } else if mechanism.is_some() || username.is_some() || password.is_some() {
        env.invalid(format!(
            "KAFKA_SASL_* settings need KAFKA_SECURITY_PROTOCOL=sasl_ssl or sasl_plaintext, \
             not {protocol}"
        ));
    }

    let files = [
        ("KAFKA_SSL_CA_LOCATION", "ssl.ca.location"),
        ("KAFKA_SSL_CERTIFICATE_LOCATION", "ssl.certificate.location"),
        ("KAFKA_SSL_KEY_LOCATION", "ssl.key.location"),
    ];
    let mut tls_settings = Vec::new();
    for (name, key) in files {
        if let Some(path) = value(env, name) {
            if let Err(e) = std::fs::metadata(&path) {
                env.invalid(format!("{name}={path:?}: {e}"));
            }
            tls_settings.push(name);
            set(key, path);
        }
    }
    let has = |name: &str| tls_settings.contains(&name);
    if has("KAFKA_SSL_CERTIFICATE_LOCATION") != has("KAFKA_SSL_KEY_LOCATION") {
        env.invalid("a client certificate needs both KAFKA_SSL_CERTIFICATE_LOCATION and KAFKA_SSL_KEY_LOCATION");
    }
    if let Some(password) = value(env, "KAFKA_SSL_KEY_PASSWORD") {
        tls_settings.push("KAFKA_SSL_KEY_PASSWORD");
        set("ssl.key.password", password);
    }
    if let Some(check) = value(env, "KAFKA_SSL_ENDPOINT_IDENTIFICATION") {
        let check = check.to_lowercase();
        if !matches!(check.as_str(), "https" | "none") {
            env.invalid(format!(
                "KAFKA_SSL_ENDPOINT_IDENTIFICATION={check:?}: must be https or none"
            ));
        }
        tls_settings.push("KAFKA_SSL_ENDPOINT_IDENTIFICATION");
        set("ssl.endpoint.identification.algorithm", check);
    }
    if !tls && !tls_settings.is_empty() {
        env.invalid(format!(
            "{} need KAFKA_SECURITY_PROTOCOL=ssl or sasl_ssl, not {protocol}",
            tls_settings.join(", ")
        ));
    }
    properties
}

/// Whether a librdkafka property holds a secret that must not reach a log.
pub(super) fn is_secret(key: &str) -> bool {
    key.contains("password") || key.contains("secret") || key.ends_with(".pem")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapped(pairs: &[(&str, &str)]) -> Result<Vec<(String, String)>, String> {
        let mut env = Env::from_pairs(pairs.iter().copied());
        let properties = from_env(&mut env);
        env.finish().map(|()| properties).map_err(|e| e.to_string())
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn nothing_set_means_no_properties() {
        assert_eq!(mapped(&[]), Ok(vec![]));
    }

    #[test]
    fn sasl_scram_over_tls_maps_every_variable() {
        let ca = std::env::temp_dir().join("streamlens-security-test-ca.pem");
        std::fs::write(&ca, "not checked here").unwrap();
        let ca = ca.to_str().unwrap();
        let got = mapped(&[
            ("KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
            ("KAFKA_SASL_MECHANISM", "scram-sha-512"),
            ("KAFKA_SASL_USERNAME", "streamlens"),
            ("KAFKA_SASL_PASSWORD", "s3cret"),
            ("KAFKA_SSL_CA_LOCATION", ca),
            ("KAFKA_SSL_ENDPOINT_IDENTIFICATION", "https"),
        ]);
        assert_eq!(
            got,
            Ok(pairs(&[
                ("security.protocol", "sasl_ssl"),
                ("sasl.mechanism", "SCRAM-SHA-512"),
                ("sasl.username", "streamlens"),
                ("sasl.password", "s3cret"),
                ("ssl.ca.location", ca),
                ("ssl.endpoint.identification.algorithm", "https"),
            ]))
        );
    }

    #[test]
    fn sasl_plain_without_tls_and_a_password_from_a_file() {
        let file = std::env::temp_dir().join("streamlens-security-test-password");
        std::fs::write(&file, "from-a-secret\n").unwrap();
        let got = mapped(&[
            ("KAFKA_SECURITY_PROTOCOL", "sasl_plaintext"),
            ("KAFKA_SASL_MECHANISM", "PLAIN"),
            ("KAFKA_SASL_USERNAME", "u"),
            ("KAFKA_SASL_PASSWORD_FILE", file.to_str().unwrap()),
        ]);
        assert_eq!(
            got,
            Ok(pairs(&[
                ("security.protocol", "sasl_plaintext"),
                ("sasl.mechanism", "PLAIN"),
                ("sasl.username", "u"),
                ("sasl.password", "from-a-secret"),
            ]))
        );
    }

    #[test]
    fn mutual_tls_needs_certificate_and_key_together() {
        let cert = std::env::temp_dir().join("streamlens-security-test-cert.pem");
        std::fs::write(&cert, "x").unwrap();
        let cert = cert.to_str().unwrap();
        let both = mapped(&[
            ("KAFKA_SECURITY_PROTOCOL", "ssl"),
            ("KAFKA_SSL_CERTIFICATE_LOCATION", cert),
            ("KAFKA_SSL_KEY_LOCATION", cert),
            ("KAFKA_SSL_KEY_PASSWORD", "k"),
        ]);
        assert_eq!(
            both,
            Ok(pairs(&[
                ("security.protocol", "ssl"),
                ("ssl.certificate.location", cert),
                ("ssl.key.location", cert),
                ("ssl.key.password", "k"),
            ]))
        );
        let half = mapped(&[
            ("KAFKA_SECURITY_PROTOCOL", "ssl"),
            ("KAFKA_SSL_CERTIFICATE_LOCATION", cert),
        ]);
        assert!(half.unwrap_err().contains("KAFKA_SSL_KEY_LOCATION"));
    }

    #[test]
    fn contradictions_are_refused_each_with_its_reason() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("KAFKA_SECURITY_PROTOCOL", "tls")], "must be one of"),
            (
                &[("KAFKA_SECURITY_PROTOCOL", "sasl_ssl")],
                "needs KAFKA_SASL_MECHANISM",
            ),
            (
                &[
                    ("KAFKA_SECURITY_PROTOCOL", "sasl_ssl"),
                    ("KAFKA_SASL_MECHANISM", "GSSAPI"),
                    ("KAFKA_SASL_USERNAME", "u"),
                    ("KAFKA_SASL_PASSWORD", "p"),
                ],
                "KAFKA_SASL_MECHANISM=\"GSSAPI\"",
            ),
            (
                &[
                    ("KAFKA_SECURITY_PROTOCOL", "sasl_ssl"),
                    ("KAFKA_SASL_MECHANISM", "PLAIN"),
                    ("KAFKA_SASL_USERNAME", "u"),
                ],
                "both KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD",
            ),
            (
                &[("KAFKA_SASL_USERNAME", "u")],
                "need KAFKA_SECURITY_PROTOCOL=sasl_ssl",
            ),
            (
                &[
                    ("KAFKA_SECURITY_PROTOCOL", "sasl_plaintext"),
                    ("KAFKA_SASL_MECHANISM", "PLAIN"),
                    ("KAFKA_SASL_USERNAME", "u"),
                    ("KAFKA_SASL_PASSWORD", "p"),
                    ("KAFKA_SSL_ENDPOINT_IDENTIFICATION", "none"),
                ],
                "KAFKA_SSL_ENDPOINT_IDENTIFICATION need KAFKA_SECURITY_PROTOCOL=ssl",
            ),
            (
                &[
                    ("KAFKA_SECURITY_PROTOCOL", "ssl"),
                    ("KAFKA_SSL_CA_LOCATION", "/surely/not/here.pem"),
                ],
                "KAFKA_SSL_CA_LOCATION=\"/surely/not/here.pem\"",
            ),
            (
                &[
                    ("KAFKA_SECURITY_PROTOCOL", "sasl_ssl"),
                    ("KAFKA_SASL_MECHANISM", "PLAIN"),
                    ("KAFKA_SASL_USERNAME", "u"),
                    ("KAFKA_SASL_PASSWORD", "p"),
                    ("KAFKA_SASL_PASSWORD_FILE", "/x"),
                ],
                "not both",
            ),
        ];
        for (settings, reason) in cases {
            let error = mapped(settings).expect_err("refused");
            assert!(error.contains(reason), "{settings:?}: {error}");
        }
    }
}
