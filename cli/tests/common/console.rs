//! A `backstop console` process for the console's tests: started on a
//! free loopback port with a configuration of the test's own DLQs (a
//! unique prefix), killed when dropped; and helpers to read its pages.

use std::io::BufRead as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running console.
pub struct Console {
    pub child: Child,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    pub http: reqwest::Client,
    /// Sent as `Authorization` with every request, if set.
    pub auth: Option<String>,
}

/// The RabbitMQ management API the console lists queues from.
pub const API: &str = "http://guest:guest@127.0.0.1:15672";

/// A configuration for the test's DLQs: RabbitMQ queues and Kafka topics
/// whose names start with `prefix`, state in `state_dir`; `extra` is
/// appended (auth, read_only).
pub fn config(dir: &std::path::Path, prefix: &str, extra: &str) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("console.toml");
    let text = format!(
        "state_dir = {state:?}\nrefresh_secs = 1\n\n[[rabbitmq]]\nurl = {url:?}\napi = {API:?}\nprefix = {prefix:?}\n\n[[kafka]]\nbrokers = {brokers:?}\nprefix = {prefix:?}\n{extra}\n",
        state = dir.join("state").display().to_string(),
        url = super::amqp(),
        brokers = super::brokers(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

impl Console {
    /// Starts `backstop console --config <config> <args…>` on a free port.
    pub fn start(config: &std::path::Path, args: &[&str]) -> Console {
        let mut child = Command::new(env!("CARGO_BIN_EXE_backstop"))
            .arg("console")
            .arg("--config")
            .arg(config)
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("MALLOC_ARENA_MAX", "2")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the console");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("console: {line}");
                let _ = tx.send(line);
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the console says where it listens");
        let base = line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .map(|addr| format!("http://{addr}"))
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        Console {
            child,
            base,
            http: http_client(),
            auth: None,
        }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.auth {
            Some(a) => r.header("authorization", a),
            None => r,
        }
    }

    /// GET `path`: status and body.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let r = self
            .request(reqwest::Method::GET, path)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// GET `path`, expecting 200; the body.
    pub async fn page(&self, path: &str) -> String {
        let (status, body) = self.get(path).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// POST a form to `path` (redirects followed): status and body.
    pub async fn post(&self, path: &str, form: &[(&str, &str)]) -> (u16, String) {
        let r = self
            .request(reqwest::Method::POST, path)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(encode(form))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// The CSRF token of the console (from a page's forms).
    pub async fn csrf(&self) -> String {
        let page = self.page("/").await;
        token(&page)
    }

    /// Waits until the DLQ page at `path` counts `want` letters (the index
    /// is built in the background); returns the page. A DLQ the console
    /// does not know yet (404: the management API it lists queues from
    /// may not list a queue declared a moment ago) is waited for too,
    /// within `limit`.
    pub async fn wait_count(&self, path: &str, want: u64, limit: Duration) -> String {
        let until = Instant::now() + limit;
        loop {
            let (status, page) = self.get(path).await;
            if status == 404 && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(300)).await;
                continue;
            }
            assert_eq!(status, 200, "GET {path}: {page}");
            let n = number(&page, "count");
            if n == Some(want) && !page.contains("Indexing…") {
                return page;
            }
            assert!(
                Instant::now() < until,
                "{path} counts {n:?} letters, not {want}"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Waits until job `id` is no longer running; returns its progress fragment.
    pub async fn wait_job(&self, id: u64, limit: Duration) -> String {
        let until = Instant::now() + limit;
        loop {
            let fragment = self.page(&format!("/jobs/{id}/progress")).await;
            if !fragment.contains("data-status=\"running\"") {
                return fragment;
            }
            assert!(Instant::now() < until, "job {id} still runs: {fragment}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The console process's peak resident memory, in KiB; fails the test
    /// when `/proc` does not say (a 0 would pass any bound).
    pub fn peak_rss_kib(&self) -> u64 {
        let path = format!("/proc/{}/status", self.child.id());
        let status = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {path} for the console's memory: {e}"));
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no VmHWM in {path}: {status}"))
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain-HTTP client (rustls with ring, as the CLI's, never used).
pub fn http_client() -> reqwest::Client {
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .tls_backend_preconfigured(tls)
        .build()
        .unwrap()
}

/// A configuration as [`config`]'s with `top` (top-level keys such as
/// `auto_index = false`) before the broker sections.
pub fn config_with(
    dir: &std::path::Path,
    prefix: &str,
    top: &str,
    extra: &str,
) -> std::path::PathBuf {
    let path = config(dir, prefix, extra);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{top}\n{text}")).unwrap();
    path
}

/// Waits until the management API lists `queue`, as the console's
/// discovery asks for it: a queue declared a moment ago may not be listed
/// yet, and until it is, the console answers 404 for its page and "no DLQ"
/// for an action on it.
pub async fn listed(queue: &str) {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let queues =
            backstop_cli::rabbit_api::get_json(API, "/api/queues/%2f?columns=name,messages").await;
        let found = queues.as_ref().is_ok_and(|q| {
            q.as_array()
                .into_iter()
                .flatten()
                .any(|q| q["name"].as_str() == Some(queue))
        });
        if found {
            return;
        }
        assert!(
            Instant::now() < until,
            "the management API does not list {queue} after 60 s ({})",
            queues
                .err()
                .map_or("not in the list".into(), |e| e.to_string())
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The ready count of `queue` once it reads `want` (acks and requeues
/// reach the count a moment after an action ends), or after 20 s.
pub async fn settled(rabbit: &backstop_rabbitmq::RabbitMq, queue: &str, want: u32) -> u32 {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let n = rabbit.message_count(queue).await.unwrap();
        if n == want || Instant::now() > until {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `form` as `application/x-www-form-urlencoded`.
pub fn encode(form: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish()
}

/// The CSRF token in a page's forms.
pub fn token(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF token");
    page[at + 19..].split('"').next().unwrap().to_owned()
}

/// The number in the element with id `id` (`<b id="depth">42</b>`).
pub fn number(page: &str, id: &str) -> Option<u64> {
    let marker = format!("id=\"{id}\"");
    let at = page.find(&marker)?;
    let rest = &page[at..];
    let start = rest.find('>')? + 1;
    rest[start..].split('<').next()?.trim().parse().ok()
}

/// The job number a redirect to `/jobs/<n>` landed on (from the page's title).
pub fn job_id(page: &str) -> u64 {
    let at = page.find("<h1>Job ").expect("a job page");
    page[at + 8..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// The message ids in the table of a DLQ page, in order.
pub fn row_ids(page: &str) -> Vec<String> {
    page.split("name=\"id\" value=\"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .map(str::to_owned)
        .collect()
}
