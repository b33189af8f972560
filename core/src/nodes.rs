//! Node lists: one setting that names every node of a cluster.

/// Splits `list` into its URLs: one URL, or several separated by commas. A
/// comma starts a new URL only when one of `schemes` (such as `amqp://`)
/// follows it, spaces around it dropped, so a comma inside a URL (in its
/// query, or in a password) stays there.
///
/// ```
/// let urls = backstop::nodes::split_urls(
///     "amqp://a:b@n1:5672/%2f?x=1,2, amqps://n2:5671/%2f",
///     &["amqp://", "amqps://"],
/// );
/// assert_eq!(urls, ["amqp://a:b@n1:5672/%2f?x=1,2", "amqps://n2:5671/%2f"]);
/// ```
pub fn split_urls(list: &str, schemes: &[&str]) -> Vec<String> {
    split_where(list, |piece| schemes.iter().any(|s| piece.starts_with(s)))
}

/// Splits `list` at the commas where `starts_url` holds for what follows
/// (spaces after the comma dropped).
pub(crate) fn split_where(list: &str, starts_url: impl Fn(&str) -> bool) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut current = String::new();
    for piece in list.split(',') {
        let trimmed = piece.trim_start();
        if starts_url(trimmed) && !current.trim().is_empty() {
            out.push(current.trim().to_owned());
            current.clear();
        }
        if current.trim().is_empty() {
            current.clear();
        } else {
            current.push(',');
        }
        current.push_str(piece);
    }
    if !current.trim().is_empty() {
        out.push(current.trim().to_owned());
    }
    out
}
