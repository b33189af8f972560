//! Secrets mounted as files: [`read_secret_file`], the one rule every
//! `@/path` and `password_file` of backstop follows.

use std::path::Path;

/// Reads a secret from `path`: its contents with one trailing newline
/// (`\n` or `\r\n`) dropped, as `echo` or a Kubernetes secret leaves it.
/// The error is the I/O error; it never holds the contents.
///
/// ```
/// let path = std::env::temp_dir().join("backstop-doc-secret");
/// std::fs::write(&path, "s3cret\n")?;
/// assert_eq!(backstop::secret::read_secret_file(&path)?, "s3cret");
/// # std::fs::remove_file(&path)?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn read_secret_file(path: &Path) -> std::io::Result<String> {
    let text = std::fs::read_to_string(path)?;
    let text = text.strip_suffix('\n').unwrap_or(&text);
    Ok(text.strip_suffix('\r').unwrap_or(text).to_owned())
}
