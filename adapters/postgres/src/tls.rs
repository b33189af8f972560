//! TLS to PostgreSQL, chosen by libpq's URL parameters:
//!
//! | `sslmode` | What happens |
//! |---|---|
//! | absent, `disable` | plain TCP |
//! | `prefer` | TLS if the server offers it, no verification, else plain |
//! | `require` | TLS, no verification (with `sslrootcert`: as `verify-ca`) |
//! | `verify-ca` | TLS, the chain must lead to `sslrootcert` (else the system roots) |
//! | `verify-full` | as `verify-ca`, and the certificate must name the host |
//!
//! `sslcert` + `sslkey` present a client certificate. The files are read for
//! every new connection, so a rotated certificate is used without a restart.
//! Only the URL form (`postgres://…?sslmode=…`) is rewritten; a key=value
//! string goes to tokio-postgres as it is.

use backstop::tls::{TlsOptions, Verify};

/// What the URL asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PgTls {
    /// The URL without the TLS parameters tokio-postgres does not know.
    pub(crate) url: String,
    /// `None`: plain TCP (no TLS connector at all).
    pub(crate) options: Option<TlsOptions>,
}

/// Splits the TLS parameters off a `postgres://` URL.
pub(crate) fn parse(url: &str) -> Result<PgTls, String> {
    let plain = || PgTls {
        url: url.to_owned(),
        options: None,
    };
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Ok(plain());
    }
    let Ok(mut parsed) = url::Url::parse(url) else {
        return Ok(plain()); // tokio-postgres says what is wrong
    };
    let mut mode = None;
    let mut options = TlsOptions::default();
    let mut kept = Vec::new();
    for (key, value) in parsed.query_pairs() {
        let value = value.into_owned();
        match key.as_ref() {
            "sslmode" => mode = Some(value),
            "sslrootcert" => options.ca_file = Some(value.into()),
            "sslcert" => options.cert_file = Some(value.into()),
            "sslkey" => options.key_file = Some(value.into()),
            _ => kept.push((key.into_owned(), value)),
        }
    }
    let has_files = options.ca_file.is_some() || options.has_identity();
    let (driver_mode, verify) = match mode.as_deref() {
        None | Some("disable") if !has_files => return Ok(plain_without(parsed, &kept, None)),
        None | Some("disable") => {
            return Err(
                "sslrootcert, sslcert and sslkey need an sslmode other than disable".into(),
            );
        }
        Some("prefer") => ("prefer", Verify::None),
        Some("require") if options.ca_file.is_some() => ("require", Verify::CaOnly),
        Some("require") => ("require", Verify::None),
        Some("verify-ca") => ("require", Verify::CaOnly),
        Some("verify-full") => ("require", Verify::Peer),
        Some(other) => {
            return Err(format!(
                "sslmode={other} is not one of disable, prefer, require, verify-ca, verify-full"
            ));
        }
    };
    options.verify = verify;
    parsed.set_query(None);
    Ok(PgTls {
        url: plain_without(parsed, &kept, Some(driver_mode)).url,
        options: Some(options),
    })
}

fn plain_without(mut url: url::Url, kept: &[(String, String)], mode: Option<&str>) -> PgTls {
    url.set_query(None);
    if !kept.is_empty() || mode.is_some() {
        let mut query = url.query_pairs_mut();
        for (k, v) in kept {
            query.append_pair(k, v);
        }
        if let Some(mode) = mode {
            query.append_pair("sslmode", mode);
        }
    }
    PgTls {
        url: url.into(),
        options: None,
    }
}

#[cfg(feature = "tls")]
mod connect {
    use backstop::tls::{TlsError, TlsOptions};
    use tokio_postgres::Socket;
    use tokio_postgres::tls::MakeTlsConnect;
    use tokio_postgres_rustls::MakeRustlsConnect;

    /// A TLS connector that reads the certificate files for every connection.
    #[derive(Clone, Debug)]
    pub(crate) struct Reloading(pub(crate) TlsOptions);

    impl MakeTlsConnect<Socket> for Reloading {
        type Stream = <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream;
        type TlsConnect = <MakeRustlsConnect as MakeTlsConnect<Socket>>::TlsConnect;
        type Error = TlsError;

        fn make_tls_connect(&mut self, host: &str) -> Result<Self::TlsConnect, TlsError> {
            let config = self.0.client_config()?;
            let mut make = MakeRustlsConnect::new(config);
            match MakeTlsConnect::<Socket>::make_tls_connect(&mut make, host) {
                Ok(connect) => Ok(connect),
                Err(never) => match never {},
            }
        }
    }
}

#[cfg(feature = "tls")]
pub(crate) use self::connect::Reloading;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmodes_map_to_verification() {
        let p = parse(
            "postgres://u:p@h:5433/db?sslmode=verify-full&sslrootcert=/ca.pem&application_name=x",
        )
        .expect("valid");
        let o = p.options.expect("tls");
        assert_eq!(o.verify, Verify::Peer);
        assert_eq!(o.ca_file.as_deref(), Some("/ca.pem".as_ref()));
        assert!(p.url.contains("sslmode=require") && p.url.contains("application_name=x"));
        assert!(!p.url.contains("sslrootcert"), "{}", p.url);
        let ca = parse("postgres://h/db?sslmode=verify-ca").expect("valid");
        assert_eq!(ca.options.expect("tls").verify, Verify::CaOnly);
        let require = parse("postgres://h/db?sslmode=require").expect("valid");
        assert_eq!(require.options.expect("tls").verify, Verify::None);
        assert_eq!(parse("postgres://h/db").expect("valid").options, None);
        assert_eq!(
            parse("postgres://h/db?sslmode=disable")
                .expect("valid")
                .options,
            None
        );
        assert!(parse("postgres://h/db?sslmode=verify-everything").is_err());
        assert!(parse("postgres://h/db?sslrootcert=/ca.pem").is_err());
    }
}
