//! `backstop console` over HTTP against the real brokers: listing, filters,
//! paging, export, the letter page (a `<script>` body shows as text), a dry
//! run and a redrive (the letters reach their source, once), purge, an
//! interrupted redrive resumed after a restart without a letter running
//! twice, Kafka's incremental index, authentication, CSRF and read-only
//! refusals, and pages of the 100,000-letter fixture in bounded memory.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backstop::idempotency::KeySource;
use backstop::publish::Publisher as _;
use backstop::{StackBuilder, handler_fn, wire};
use backstop_kafka::{Kafka, TopicSpec};
use backstop_rabbitmq::{RabbitMq, Topology};
use common::console::{Console, config, job_id, listed, number, row_ids, settled, token};
use common::*;

/// Letter `i` of a test DLQ fed from `source`: a JSON body a worker can
/// run, kind `decode` when `i % 4 == 0`, else `permanent`, with
/// [`error_for`]`(i)`'s text.
fn test_letter(source: &str, id: &str, i: u64) -> backstop::Message {
    let mut m = letter(source, id, 4 * i + 1, 0);
    m.headers
        .insert(wire::ERROR.to_owned(), error_for(i).to_owned());
    if i.is_multiple_of(4) {
        m.headers
            .insert(wire::ERROR_KIND.to_owned(), "decode".to_owned());
    }
    m
}

/// A quorum queue `q` with its DLQ holding `n` letters `<q>-<i>`, once
/// the management API lists the DLQ (see [`listed`]).
async fn rabbit_dlq(prefix: &str, n: u64) -> (RabbitMq, String) {
    let rabbit = RabbitMq::connect(&amqp()).await.unwrap();
    let q = unique(prefix);
    rabbit.declare(&Topology::quorum(&q)).await.unwrap();
    let publisher = rabbit.publisher();
    let dlq = format!("{q}.dlq");
    for i in 0..n {
        let m = test_letter(&q, &format!("{q}-{i}"), i);
        publisher.publish_to_queue(&dlq, &m).await.unwrap();
    }
    publisher.close().await;
    listed(&dlq).await;
    (rabbit, q)
}

/// The message ids a queue holds, each as often as it is there (the
/// queue is walked by the DLQ library and keeps its messages).
async fn queue_ids(queue: &str) -> Vec<String> {
    let dlq = backstop_cli::dlq::Dlq::rabbit(&amqp(), queue, Duration::from_secs(60))
        .await
        .unwrap();
    let ids = std::cell::RefCell::new(Vec::new());
    dlq.each(
        true,
        |l| {
            for _ in 0..l.copies {
                ids.borrow_mut().push(l.id().to_owned());
            }
            Ok(())
        },
        |id| ids.borrow_mut().push(id.to_owned()),
    )
    .await
    .unwrap();
    let mut ids = ids.into_inner();
    ids.sort();
    ids
}

fn dlq_path(cluster: &str, name: &str) -> String {
    format!("/dlq/{cluster}/{name}")
}

const INDEXED: Duration = Duration::from_secs(60);
const JOB: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbit_dlq_lists_filters_pages_exports_and_shows_a_script_body_as_text() {
    let (rabbit, q) = rabbit_dlq("cl", 120).await;
    let dlq = format!("{q}.dlq");
    let script = backstop::Message::new("<script>alert(\"body\")</script>")
        .with_message_id(format!("{q}-script"))
        .with_header(wire::ERROR_KIND, "permanent")
        .with_header(wire::ERROR, "<img src=x onerror=alert(1)>")
        .with_header(wire::ORIGINAL_SOURCE, q.as_str());
    let publisher = rabbit.publisher();
    publisher.publish_to_queue(&dlq, &script).await.unwrap();
    publisher.close().await;

    let dir = tempfile::tempdir().unwrap();
    let console = Console::start(&config(dir.path(), &q, ""), &[]);
    let path = dlq_path("rabbitmq", &dlq);
    let first = console.wait_count(&path, 121, INDEXED).await;

    let overview = console.page("/").await;
    assert!(overview.contains(&dlq), "{overview}");
    assert!(!overview.contains("guest:guest"), "no credential is shown");

    // Pages of 50, in DLQ order, without overlap.
    let mut seen = row_ids(&first);
    assert_eq!(seen.len(), 50);
    let mut page = first;
    while let Some(at) = page.find("rel=\"next\"").and_then(|_| page.find("after=")) {
        let after: String = page[at + 6..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        page = console.page(&format!("{path}?after={after}")).await;
        seen.extend(row_ids(&page));
    }
    assert_eq!(seen.len(), 121);
    assert_eq!(seen.iter().collect::<BTreeSet<_>>().len(), 121);
    assert_eq!(seen[0], format!("{q}-0"));

    let count = |query: String| {
        let console = &console;
        let path = path.clone();
        async move { number(&console.page(&format!("{path}?{query}")).await, "count") }
    };
    assert_eq!(count("kind=decode".into()).await, Some(30));
    assert_eq!(count("error=CARD+declined".into()).await, Some(30));
    assert_eq!(count(format!("key={q}-7")).await, Some(1));
    assert_eq!(
        count("since=2999-01-01T00:00:00%2B02:00".into()).await,
        Some(0)
    );
    assert_eq!(
        count("until=2999-01-01T00:00:00-05:00".into()).await,
        Some(121)
    );
    let (status, bad) = console.get(&format!("{path}?since=yesterday")).await;
    assert_eq!(status, 400, "a time without an offset is refused: {bad}");

    let (status, export) = console.get(&format!("{path}/export?kind=decode")).await;
    assert_eq!(status, 200);
    let lines: Vec<serde_json::Value> = export
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 30);
    assert!(lines.iter().all(|l| l["error_kind"] == "decode"));

    // The script letter: every field escaped.
    let found = console.page(&format!("{path}?key={q}-script")).await;
    let at = found.find("/letters/").expect("a link to the letter");
    let seq: String = found[at + 9..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let letter = console.page(&format!("{path}/letters/{seq}")).await;
    assert!(
        letter.contains("&lt;script&gt;alert(&quot;body&quot;)&lt;/script&gt;"),
        "{letter}"
    );
    assert!(!letter.contains("<script>alert"), "a body is never markup");
    assert!(letter.contains("&lt;img src=x onerror=alert(1)&gt;"));
    assert!(!letter.contains("<img src=x"));
    let hex = console
        .page(&format!("{path}/letters/{seq}?view=hex"))
        .await;
    assert!(hex.contains("3c 73 63 72 69 70 74 3e"), "{hex}");
    assert_eq!(
        rabbit.message_count(&dlq).await.unwrap(),
        121,
        "browsing keeps every letter"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbit_dry_run_then_redrive_sends_the_selected_letters_to_their_source_once() {
    let (rabbit, q) = rabbit_dlq("cr", 40).await;
    let dlq = format!("{q}.dlq");
    let dir = tempfile::tempdir().unwrap();
    let console = Console::start(&config(dir.path(), &q, ""), &[]);
    let path = dlq_path("rabbitmq", &dlq);
    let page = console.wait_count(&path, 40, INDEXED).await;
    let csrf = token(&page);
    let chosen: Vec<String> = row_ids(&page).into_iter().take(10).collect();
    let mut form: Vec<(&str, &str)> =
        vec![("csrf", &csrf), ("scope", "selected"), ("max_replays", "3")];
    form.extend(chosen.iter().map(|id| ("id", id.as_str())));

    let (status, preview) = console.post(&format!("{path}/preview"), &form).await;
    assert_eq!(status, 200, "{preview}");
    assert_eq!(number(&preview, "would"), Some(10), "{preview}");
    assert!(
        preview.contains(&format!("<code>{q}</code>")),
        "to the source queue: {preview}"
    );
    assert_eq!(
        rabbit.message_count(&q).await.unwrap(),
        0,
        "a dry run sends nothing"
    );

    let (status, job) = console.post(&format!("{path}/redrive"), &form).await;
    assert_eq!(status, 200, "{job}");
    let done = console.wait_job(job_id(&job), JOB).await;
    assert!(done.contains("data-status=\"done\""), "{done}");
    assert_eq!(number(&done, "done"), Some(10), "{done}");

    assert_eq!(settled(&rabbit, &q, 10).await, 10);
    let mut want = chosen.clone();
    want.sort();
    assert_eq!(
        queue_ids(&q).await,
        want,
        "each selected letter reached its source once"
    );
    assert_eq!(settled(&rabbit, &dlq, 30).await, 30);
    let after = console.page(&path).await;
    assert_eq!(
        number(&after, "count"),
        Some(30),
        "the index follows the redrive"
    );
    let audit = console.page("/audit").await;
    for action in ["redrive dry run", "redrive", "redrive finished"] {
        assert!(
            audit.contains(&format!("<td>{action}</td>")),
            "{action}: {audit}"
        );
    }
    assert!(audit.contains("<td>local</td>"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_needs_the_dlqs_name_typed_and_removes_what_the_filter_selects() {
    let (rabbit, q) = rabbit_dlq("cp", 20).await;
    let dlq = format!("{q}.dlq");
    let dir = tempfile::tempdir().unwrap();
    let console = Console::start(&config(dir.path(), &q, ""), &[]);
    let path = dlq_path("rabbitmq", &dlq);
    let csrf = token(&console.wait_count(&path, 20, INDEXED).await);
    let form = |confirm: &'static str| {
        vec![
            ("csrf", csrf.clone()),
            ("scope", "matching".to_owned()),
            ("kind", "decode".to_owned()),
            ("confirm", confirm.to_owned()),
        ]
    };
    let send = |f: Vec<(&'static str, String)>| {
        let console = &console;
        let path = path.clone();
        async move {
            let f: Vec<(&str, &str)> = f.iter().map(|(k, v)| (*k, v.as_str())).collect();
            console.post(&format!("{path}/purge"), &f).await
        }
    };
    let (status, refused) = send(form("yes")).await;
    assert_eq!(status, 400);
    assert!(refused.contains("type the DLQ"), "{refused}");
    assert_eq!(rabbit.message_count(&dlq).await.unwrap(), 20);

    let mut confirmed = form("");
    confirmed[3].1 = dlq.clone();
    let (status, job) = send(confirmed).await;
    assert_eq!(status, 200, "{job}");
    let done = console.wait_job(job_id(&job), JOB).await;
    assert_eq!(number(&done, "done"), Some(5), "{done}");
    assert_eq!(settled(&rabbit, &dlq, 15).await, 15);
    assert_eq!(number(&console.page(&path).await, "count"), Some(15));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_redrive_says_why_and_keeps_every_letter() {
    let (rabbit, q) = rabbit_dlq("cf", 6).await;
    let dlq = format!("{q}.dlq");
    let dir = tempfile::tempdir().unwrap();
    let console = Console::start(&config(dir.path(), &q, ""), &[]);
    let path = dlq_path("rabbitmq", &dlq);
    let csrf = token(&console.wait_count(&path, 6, INDEXED).await);
    let nowhere = format!("{q}-no-such-queue");
    let form = [
        ("csrf", csrf.as_str()),
        ("scope", "matching"),
        ("to", nowhere.as_str()),
    ];
    let (_, job) = console.post(&format!("{path}/redrive"), &form).await;
    let failed = console.wait_job(job_id(&job), JOB).await;
    assert!(failed.contains("data-status=\"failed\""), "{failed}");
    assert!(
        failed.contains(&nowhere),
        "the error names the destination: {failed}"
    );
    // Ready again once the failed walk's channel returned what it held.
    settled(&rabbit, &dlq, 6).await;
    assert_eq!(
        rabbit.message_count(&nowhere).await.ok(),
        None,
        "nothing created"
    );
    assert_eq!(
        rabbit.message_count(&dlq).await.unwrap(),
        6,
        "every letter stayed"
    );
    // The index is walked again and shows them all.
    console.wait_count(&path, 6, INDEXED).await;
    assert!(console.page("/audit").await.contains("redrive failed"));
}

/// Starts a redrive of every letter of the DLQ page `path` at `rate`
/// letters a second and waits until it redrove `at_least`; its job number.
async fn paced_redrive(console: &Console, path: &str, rate: &str, at_least: u64) -> u64 {
    let csrf = token(&console.page(path).await);
    let form = [
        ("csrf", csrf.as_str()),
        ("scope", "matching"),
        ("rate", rate),
    ];
    let (_, job) = console.post(&format!("{path}/redrive"), &form).await;
    let id = job_id(&job);
    let until = Instant::now() + JOB;
    loop {
        let progress = console.page(&format!("/jobs/{id}/progress")).await;
        if number(&progress, "done").is_some_and(|d| d >= at_least) {
            return id;
        }
        assert!(
            Instant::now() < until,
            "the redrive does not progress: {progress}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The console is killed (SIGKILL) while a paced redrive runs, then
/// started again on the same state: it resumes the job, which finishes
/// without redriving a letter twice. A worker with an idempotency store
/// over the source runs every letter exactly once (a letter whose copy was
/// confirmed just before the kill, and not yet acked, is sent again with
/// the same message id and replay count, which the store admits once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_redrive_resumes_after_a_restart_and_runs_each_letter_once() {
    let total = 60u64;
    let (rabbit, q) = rabbit_dlq("ck", total).await;
    let dlq = format!("{q}.dlq");
    let store = redis_store(&q).await;
    let ids: Vec<String> = (0..total).map(|i| format!("{q}-{i}")).collect();
    mark_dead_lettered(&store, &ids).await;

    let dir = tempfile::tempdir().unwrap();
    let conf = config(dir.path(), &q, "");
    let path = dlq_path("rabbitmq", &dlq);
    let console = Console::start(&conf, &[]);
    console.wait_count(&path, total, INDEXED).await;
    let id = paced_redrive(&console, &path, "20", 15).await;
    drop(console); // SIGKILL
    let left = rabbit.message_count(&dlq).await.unwrap();
    assert!(
        u64::from(left) < total && left > 0,
        "killed mid-way ({left} left)"
    );

    let console = Console::start(&conf, &[]);
    let done = console.wait_job(id, JOB).await;
    assert!(done.contains("data-status=\"done\""), "{done}");
    assert!(done.contains("resumed 1 time(s)"), "{done}");
    assert_eq!(settled(&rabbit, &dlq, 0).await, 0, "the DLQ is drained");
    let delivered = rabbit.message_count(&q).await.unwrap();
    // Paced: one letter in flight, so at most one copy is sent again (the
    // one confirmed but not acked when the console was killed).
    assert!(
        u64::from(delivered) >= total && u64::from(delivered) <= total + 1,
        "{delivered} copies for {total} letters"
    );
    let audit = console.page("/audit").await;
    assert!(audit.contains("redrive resumed"), "{audit}");

    let state = Arc::new(Worker::default());
    let stack = StackBuilder::<serde_json::Value>::new(Arc::new(rabbit.dead_letter_sink()))
        .idempotency(Arc::new(store), KeySource::MessageId)
        .build(handler_fn(handler(Arc::clone(&state))));
    let ran_all = || {
        state
            .handled
            .lock()
            .unwrap()
            .iter()
            .collect::<BTreeSet<_>>()
            .len() as u64
            == total
    };
    run_until(
        rabbit.source(&q, 16).await.unwrap(),
        stack,
        Duration::from_secs(60),
        || async { ran_all() && rabbit.message_count(&q).await.unwrap() == 0 },
    )
    .await;
    let handled = state.handled.lock().unwrap().clone();
    assert_eq!(
        handled.iter().collect::<BTreeSet<_>>().len() as u64,
        total,
        "every letter ran"
    );
    assert_eq!(
        handled.len() as u64,
        total,
        "no letter ran twice ({delivered} copies)"
    );
}

/// The sum of a topic's end offsets.
async fn records(k: &Kafka, topic: &str) -> i64 {
    k.topics()
        .unwrap()
        .end_offsets(topic)
        .await
        .unwrap()
        .values()
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_index_grows_from_its_last_offsets_and_a_redrive_goes_to_the_retry_path() {
    let source = unique("ckf");
    let k = Kafka::new(brokers(), "g");
    let dlq = format!("{source}.g.dlq");
    let retry = format!("{source}.g.retry.1s");
    k.topics()
        .unwrap()
        .create(&[TopicSpec::new(&dlq).partitions(2), TopicSpec::new(&retry)])
        .await
        .unwrap();
    let publisher = k.publisher().unwrap();
    let publish = |from: u64, to: u64| {
        let (publisher, dlq, source) = (publisher.clone(), dlq.clone(), source.clone());
        async move {
            for i in from..to {
                let m = test_letter(&source, &format!("{source}-{i}"), i).with_key(format!("k{i}"));
                publisher.publish(&dlq, &m).await.unwrap();
            }
        }
    };
    publish(0, 30).await;
    let dir = tempfile::tempdir().unwrap();
    let console = Console::start(&config(dir.path(), &source, ""), &[]);
    let path = dlq_path("kafka", &dlq);
    console.wait_count(&path, 30, INDEXED).await;
    publish(30, 40).await;
    let page = console.wait_count(&path, 40, INDEXED).await;
    assert!(!page.contains(">2</td>"), "no letter counted twice");
    assert_eq!(
        number(&console.page(&format!("{path}?key=k33")).await, "count"),
        Some(1)
    );

    let csrf = token(&page);
    let form = [
        ("csrf", csrf.as_str()),
        ("scope", "matching"),
        ("kind", "decode"),
    ];
    let (_, preview) = console.post(&format!("{path}/preview"), &form).await;
    assert_eq!(number(&preview, "would"), Some(10), "{preview}");
    assert!(
        preview.contains(&retry),
        "the group's retry path: {preview}"
    );
    let (_, job) = console.post(&format!("{path}/redrive"), &form).await;
    let done = console.wait_job(job_id(&job), JOB).await;
    assert_eq!(number(&done, "done"), Some(10), "{done}");
    assert_eq!(records(&k, &retry).await, 10, "each letter redriven once");
    // The next refreshes read the state topic: still 30, none counted twice.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(number(&console.page(&path).await, "count"), Some(30));
    let overview = console.page("/").await;
    assert!(
        overview.contains("decode 10"),
        "redriven in the last hour: {overview}"
    );
    k.topics().unwrap().delete(&[&dlq, &retry]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_csrf_and_read_only_refuse_what_they_must() {
    let (_rabbit, q) = rabbit_dlq("ca", 4).await;
    let dir = tempfile::tempdir().unwrap();
    let (open_dir, auth_dir) = (dir.path().join("open"), dir.path().join("auth"));
    std::fs::create_dir_all(&open_dir).unwrap();
    std::fs::create_dir_all(&auth_dir).unwrap();

    // Off loopback without authentication: refused at start.
    let open = config(&open_dir, &q, "");
    let out = cli(&[
        "console",
        "--config",
        open.to_str().unwrap(),
        "--listen",
        "0.0.0.0:0",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to listen on 0.0.0.0"));
    // An empty secret is no authentication; half of basic auth refuses to start.
    // A console that starts anyway is killed after 10 s (and fails below).
    let with_env = |env: &[(&str, &str)]| {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_backstop"))
            .args([
                "console",
                "--config",
                open.to_str().unwrap(),
                "--listen",
                "0.0.0.0:0",
            ])
            .env_remove("BACKSTOP_CONSOLE_TOKEN")
            .env_remove("BACKSTOP_CONSOLE_USER")
            .env_remove("BACKSTOP_CONSOLE_PASSWORD")
            .envs(env.iter().copied())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let until = Instant::now() + Duration::from_secs(10);
        while child.try_wait().unwrap().is_none() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        child.wait_with_output().unwrap()
    };
    for (env, says) in [
        (
            &[("BACKSTOP_CONSOLE_TOKEN", "")][..],
            "refusing to listen on 0.0.0.0",
        ),
        (
            &[
                ("BACKSTOP_CONSOLE_USER", "ops"),
                ("BACKSTOP_CONSOLE_PASSWORD", ""),
            ][..],
            "password is missing or empty",
        ),
        (
            &[("BACKSTOP_CONSOLE_PASSWORD", "pw")][..],
            "user is missing or empty",
        ),
    ] {
        let out = with_env(env);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(says),
            "{env:?}: {err}"
        );
    }

    let conf = config(
        &auth_dir,
        &q,
        "[auth]\ntoken = \"s3cret-token\"\nuser = \"ops\"\npassword = \"pa55word\"\n",
    );
    let mut console = Console::start(&conf, &[]);
    assert_eq!(console.get("/").await.0, 401);
    let csp = console
        .http
        .get(format!("{}/", console.base))
        .send()
        .await
        .unwrap();
    let csp = csp.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("script-src 'self';"),
        "no inline script runs: {csp}"
    );
    console.auth = Some("Bearer wrong".into());
    assert_eq!(console.get("/").await.0, 401);
    console.auth = Some("Basic b3BzOnBhNTV3b3Jk".into()); // ops:pa55word
    let page = console.page("/").await;
    assert!(page.contains("signed in as <b>ops</b>"), "{page}");
    assert!(
        !page.contains("s3cret-token")
            && !page.contains("pa55word")
            && !page.contains("guest:guest")
    );
    let path = dlq_path("rabbitmq", &format!("{q}.dlq"));
    let csrf = token(&console.wait_count(&path, 4, INDEXED).await);
    let preview = format!("{path}/preview");
    let scope = ("scope", "matching");

    assert_eq!(
        console.post(&preview, &[scope]).await.0,
        403,
        "no CSRF token"
    );
    assert_eq!(
        console.post(&preview, &[("csrf", "0000"), scope]).await.0,
        403
    );
    let cross = console
        .http
        .post(format!("{}{preview}", console.base))
        .header("authorization", console.auth.clone().unwrap())
        .header("origin", "http://evil.example")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(common::console::encode(&[("csrf", csrf.as_str()), scope]))
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status().as_u16(), 403, "another origin");
    let (status, ok) = console.post(&preview, &[("csrf", &csrf), scope]).await;
    assert_eq!(status, 200, "{ok}");
    assert_eq!(number(&ok, "would"), Some(4));
    console.auth = Some("Bearer s3cret-token".into());
    assert!(
        console.page("/audit").await.contains("<td>ops</td>"),
        "the audit log names the user"
    );
    drop(console);

    // Read-only over a fresh state: nothing walks the RabbitMQ queue (a
    // walk takes and puts back every letter), neither a page nor a POST.
    let console = Console::start(&open, &["--read-only"]);
    let page = console.page(&path).await;
    assert!(page.contains("read-only") && !page.contains("id=\"purge\""));
    assert!(page.contains("index not built yet"), "{page}");
    let csrf = token(&page);
    for action in ["preview", "redrive", "purge", "reindex"] {
        let (status, refused) = console
            .post(
                &format!("{path}/{action}"),
                &[
                    ("csrf", csrf.as_str()),
                    scope,
                    ("confirm", &format!("{q}.dlq")),
                ],
            )
            .await;
        assert_eq!(status, 403, "{action}: {refused}");
        assert!(refused.contains("read-only"), "{action}: {refused}");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(console.page(&path).await.contains("index not built yet"));
    assert_eq!(rabbit_count(&format!("{q}.dlq")).await, 4, "no letter left");
}

/// Rates a timer cannot keep (`1e-300` per second: an interval longer
/// than any timer; `1e12`: a zero interval) are refused with a message,
/// and no job is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_rates_are_refused_and_start_no_job() {
    let (_rabbit, q) = rabbit_dlq("cr", 3).await;
    let dir = tempfile::tempdir().unwrap();
    let console = Console::start(&config(dir.path(), &q, ""), &[]);
    let path = dlq_path("rabbitmq", &format!("{q}.dlq"));
    let csrf = token(&console.wait_count(&path, 3, INDEXED).await);
    for rate in ["1e-300", "1e12", "0.001", "100001", "0", "-1", "NaN", "inf"] {
        for action in ["preview", "redrive"] {
            let form = [
                ("csrf", csrf.as_str()),
                ("scope", "matching"),
                ("rate", rate),
            ];
            let (status, body) = console.post(&format!("{path}/{action}"), &form).await;
            assert_eq!(status, 400, "{action} at rate {rate}: {body}");
            assert!(body.contains("from 0.01 to 100000"), "{body}");
        }
    }
    let audit = console.page("/audit").await;
    assert!(!audit.contains("/jobs/"), "no job: {audit}");
    // The CLI refuses them too.
    let dlq = format!("{q}.dlq");
    let out = cli(&[
        "dlq",
        "replay",
        "--amqp",
        &amqp(),
        "--queue",
        &q,
        "--rate",
        "1e12",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("from 0.01 to 100000"), "{err}");
    assert_eq!(rabbit_count(&dlq).await, 3);
}

/// A job that cannot run (here one recorded with a rate a timer cannot
/// keep, as a console before the bound could) ends `failed` with the
/// reason when resumed, instead of staying `running` and being resumed
/// again at every start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_job_that_cannot_run_ends_failed() {
    use backstop_cli::console::query::Query;
    use backstop_cli::console::store::{Action, JobSpec, Store};
    let (rabbit, q) = rabbit_dlq("cp", 3).await;
    let dlq = format!("{q}.dlq");
    let dir = tempfile::tempdir().unwrap();
    let conf = config(dir.path(), &q, "");
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let spec = JobSpec {
        action: Action::Redrive,
        cluster: "rabbitmq".into(),
        dlq: dlq.clone(),
        query: Query::default(),
        to: None,
        rate: Some(1e12),
        max_replays: 3,
        only: None,
    };
    let id = Store::open(&state.join("console.sqlite"))
        .unwrap()
        .create_job(&spec, "ops")
        .unwrap();
    let path = dlq_path("rabbitmq", &dlq);
    let console = Console::start(&conf, &[]);
    let done = console.wait_job(u64::try_from(id).unwrap(), JOB).await;
    assert!(done.contains("data-status=\"failed\""), "{done}");
    assert!(done.contains("from 0.01 to 100000"), "{done}");
    // The index walk moves each letter to the tail (a confirmed copy, then
    // the original's ack): a console killed between the two leaves a second
    // copy of that letter. Killed only once the walk is done.
    console.wait_count(&path, 3, INDEXED).await;
    drop(console);
    let console = Console::start(&conf, &[]);
    let page = console.page(&format!("/jobs/{id}")).await;
    assert!(
        page.contains("data-status=\"failed\""),
        "not resumed again: {page}"
    );
    console.wait_count(&path, 3, INDEXED).await;
    assert_eq!(settled(&rabbit, &dlq, 3).await, 3, "every letter stayed");
    let mut ids = queue_ids(&dlq).await;
    ids.sort();
    assert_eq!(ids, [0, 1, 2].map(|i| format!("{q}-{i}")), "once each");
}

/// A redrive cancelled mid-way ends `cancelled` with fewer letters redriven
/// than selected, none lost; a console restarted read-only does not resume
/// a job (it shows it `interrupted`), the next one that may act does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_redrive_stops_between_letters_and_read_only_resumes_nothing() {
    let total = 40u64;
    let (rabbit, q) = rabbit_dlq("cc", total).await;
    let dlq = format!("{q}.dlq");
    let dir = tempfile::tempdir().unwrap();
    let conf = config(dir.path(), &q, "");
    let path = dlq_path("rabbitmq", &dlq);
    let console = Console::start(&conf, &[]);
    console.wait_count(&path, total, INDEXED).await;
    let id = paced_redrive(&console, &path, "10", 5).await;
    drop(console); // SIGKILL mid-way
    let left = settled(&rabbit, &dlq, 0).await;

    let read_only = Console::start(&conf, &["--read-only"]);
    let page = read_only.page(&format!("/jobs/{id}")).await;
    assert!(page.contains("data-status=\"interrupted\""), "{page}");
    assert!(!page.contains("id=\"cancel\""), "no cancel read-only");
    let (status, _) = read_only
        .post(&format!("/jobs/{id}/cancel"), &[("csrf", "any")])
        .await;
    assert_eq!(status, 403, "cancel is refused read-only");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        rabbit.message_count(&dlq).await.unwrap(),
        left,
        "not resumed"
    );
    drop(read_only);

    let console = Console::start(&conf, &[]);
    let page = console.page(&format!("/jobs/{id}")).await;
    assert!(page.contains("id=\"cancel\""), "{page}");
    let csrf = token(&page);
    let (status, body) = console
        .post(&format!("/jobs/{id}/cancel"), &[("csrf", &csrf)])
        .await;
    assert_eq!(status, 200, "{body}");
    let done = console.wait_job(id, JOB).await;
    assert!(done.contains("data-status=\"cancelled\""), "{done}");
    let redriven = number(&done, "done").unwrap();
    assert!(redriven < total, "{redriven} of {total} redriven");
    let (status, _) = console
        .post(&format!("/jobs/{id}/cancel"), &[("csrf", &csrf)])
        .await;
    assert_eq!(status, 409, "a job that ended cannot be cancelled");
    let audit = console.page("/audit").await;
    assert!(audit.contains("redrive cancelled"), "{audit}");

    // None lost: each letter is in the DLQ or at its source (one sent
    // twice at most: confirmed but not acked when the console was killed).
    let in_dlq = queue_ids(&dlq).await;
    let at_source = queue_ids(&q).await;
    assert!(!in_dlq.is_empty(), "stopped before the end");
    let all: BTreeSet<&String> = in_dlq.iter().chain(&at_source).collect();
    let want: BTreeSet<String> = (0..total).map(|i| format!("{q}-{i}")).collect();
    assert_eq!(all, want.iter().collect(), "no letter lost");
    assert!(in_dlq.len() + at_source.len() <= total as usize + 1);
}

/// Without `auto_index`, a GET of an unindexed DLQ walks nothing (on
/// RabbitMQ a walk takes and puts back every letter) and offers a button
/// that builds the index (a POST with the CSRF token).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_never_walks_the_broker_and_a_button_builds_the_index() {
    let (_rabbit, q) = rabbit_dlq("cg", 3).await;
    let dir = tempfile::tempdir().unwrap();
    let conf = common::console::config_with(dir.path(), &q, "auto_index = false", "");
    let console = Console::start(&conf, &[]);
    let path = dlq_path("rabbitmq", &format!("{q}.dlq"));
    let page = console.page(&path).await;
    assert!(page.contains("Build the index"), "{page}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(console.page(&path).await.contains("index not built yet"));
    let csrf = token(&page);
    let (status, body) = console
        .post(&format!("{path}/reindex"), &[("csrf", &csrf)])
        .await;
    assert_eq!(status, 200, "{body}");
    console.wait_count(&path, 3, INDEXED).await;
}

/// A redrive of "every letter matching" acts on the letters the index
/// holds, not on those that reached the DLQ after it was built; the
/// preview says so and the audit counts the letters acted on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_matching_redrive_leaves_letters_that_arrived_after_the_index() {
    let (rabbit, q) = rabbit_dlq("cm", 6).await;
    let dlq = format!("{q}.dlq");
    let dir = tempfile::tempdir().unwrap();
    let console = Console::start(&config(dir.path(), &q, ""), &[]);
    let path = dlq_path("rabbitmq", &dlq);
    let csrf = token(&console.wait_count(&path, 6, INDEXED).await);

    let publisher = rabbit.publisher();
    let late: Vec<String> = (0..2).map(|i| format!("{q}-late-{i}")).collect();
    for (i, id) in late.iter().enumerate() {
        let m = test_letter(&q, id, 100 + i as u64);
        publisher.publish_to_queue(&dlq, &m).await.unwrap();
    }
    publisher.close().await;
    assert_eq!(settled(&rabbit, &dlq, 8).await, 8);

    let form = [("csrf", csrf.as_str()), ("scope", "matching")];
    let (_, preview) = console.post(&format!("{path}/preview"), &form).await;
    assert_eq!(number(&preview, "would"), Some(6), "{preview}");
    assert!(preview.contains("id=\"bound\""), "{preview}");
    let (_, job) = console.post(&format!("{path}/redrive"), &form).await;
    let done = console.wait_job(job_id(&job), JOB).await;
    assert!(done.contains("data-status=\"done\""), "{done}");
    assert_eq!(number(&done, "done"), Some(6), "{done}");
    assert_eq!(settled(&rabbit, &dlq, 2).await, 2);
    assert_eq!(queue_ids(&dlq).await, late, "the late letters stayed");
    assert_eq!(settled(&rabbit, &q, 6).await, 6);
    let audit = console.page("/audit").await;
    assert!(
        audit.contains("bound to the 6 letter(s) in the index"),
        "{audit}"
    );
}

/// A DNS-rebinding page (`http://evil.example:<port>` resolving to
/// 127.0.0.1) is same-origin for the browser: the console answers only to
/// its loopback names, so such a page reads no page and posts no action.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_host_header_is_refused_pages_and_actions() {
    let (_rabbit, q) = rabbit_dlq("ch", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let console = Console::start(&config(dir.path(), &q, ""), &[]);
    let path = dlq_path("rabbitmq", &format!("{q}.dlq"));
    let csrf = token(&console.wait_count(&path, 2, INDEXED).await);
    let port = console.base.rsplit(':').next().unwrap().to_owned();
    let with_host = |method: reqwest::Method, at: &str, host: String| {
        console
            .http
            .request(method, format!("{}{at}", console.base))
            .header("host", host)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(common::console::encode(&[
                ("csrf", csrf.as_str()),
                ("scope", "matching"),
            ]))
    };
    let evil = format!("evil.example:{port}");
    for (method, at) in [
        (reqwest::Method::GET, "/".to_owned()),
        (reqwest::Method::GET, path.clone()),
        (reqwest::Method::POST, format!("{path}/preview")),
        (reqwest::Method::POST, format!("{path}/purge")),
    ] {
        let r = with_host(method.clone(), &at, evil.clone())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body = r.text().await.unwrap();
        assert_eq!(status, 403, "{method} {at} for {evil}: {body}");
        assert!(!body.contains(&csrf), "no token for another host");
        assert!(body.contains("refused a request for host"), "{body}");
    }
    for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}")] {
        let r = with_host(reqwest::Method::GET, &path, host.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{host}");
        let r = with_host(
            reqwest::Method::POST,
            &format!("{path}/preview"),
            host.clone(),
        )
        .send()
        .await
        .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{host}");
    }
    assert_eq!(
        rabbit_count(&format!("{q}.dlq")).await,
        2,
        "nothing was purged"
    );
    // The state (indexes hold letter bodies) is readable by its user only.
    use std::os::unix::fs::PermissionsExt as _;
    for d in ["state", "state/index"] {
        let mode = std::fs::metadata(dir.path().join(d))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700, "{d}");
    }
}

async fn rabbit_count(queue: &str) -> u32 {
    let rabbit = RabbitMq::connect(&amqp()).await.unwrap();
    rabbit.message_count(queue).await.unwrap()
}

/// The letters of the smaller DLQ the fixture's memory is compared with.
const SMALL: u64 = 10_000;

/// What the console may use over the fixture beyond the same console over
/// [`SMALL`] letters: its index connections' page caches (a reader, a
/// writer, a job's marker) plus the 12 MiB of slack of the CLI's bound
/// (`scale.rs`).
fn bound_kib() -> u64 {
    3 * u64::from(backstop_cli::console::index::CACHE_KIB) + 12 * 1024
}

/// Starts a console over `dlq`, waits for its index of `n` letters and
/// returns it with the time the index took.
async fn indexed(dir: &std::path::Path, dlq: &str, n: u64) -> (Console, Duration) {
    let started = Instant::now();
    let console = Console::start(&config(dir, dlq, ""), &[]);
    console
        .wait_count(&dlq_path("kafka", dlq), n, Duration::from_secs(300))
        .await;
    (console, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100k_letter_kafka_dlq_pages_in_bounded_memory() {
    let small_source = unique("cks");
    let small = format!("{small_source}.g.dlq");
    let k = Kafka::new(brokers(), "g");
    k.topics()
        .unwrap()
        .create(&[TopicSpec::new(&small).partitions(4)])
        .await
        .unwrap();
    fixture::fill_kafka(&k, &small, &small_source, SMALL).await;
    let fx = fixture::kafka().await;
    let n = fixture::size();

    let dir = tempfile::tempdir().unwrap();
    let (baseline, _) = indexed(&dir.path().join("small"), &small, SMALL).await;
    let (console, took) = indexed(&dir.path().join("large"), &fx.dlq, n).await;
    eprintln!("indexed {n} letters in {took:?}");
    let path = dlq_path("kafka", &fx.dlq);
    let mut slowest = Duration::ZERO;
    let mut page = String::new();
    for query in [
        String::new(),
        "error=declined".into(),
        "kind=permanent&since=2000-01-01T00:00:00%2B01:00".into(),
        format!("after={}", n / 2),
        format!("after={}", n - 10),
        format!(
            "key={:016x}{:016x}",
            77_777 % n,
            (77_777 % n).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ),
        "error=no+such+error".into(),
    ] {
        let started = Instant::now();
        page = console.page(&format!("{path}?{query}")).await;
        let t = started.elapsed();
        eprintln!("page ?{query}: {t:?}");
        slowest = slowest.max(t);
    }
    assert_eq!(number(&page, "count"), Some(0));
    // How fast a page is, is a figure to read, not a bound to assert: these
    // are pages of a debug build on a machine that may be busy with other
    // work. The bound only catches a page that hangs.
    eprintln!("slowest page: {slowest:?}");
    assert!(slowest < Duration::from_secs(20), "a page took {slowest:?}");
    let started = Instant::now();
    let letter = console.page(&format!("{path}/letters/{}", n / 3)).await;
    assert!(letter.contains("card declined"));
    eprintln!("letter page: {:?}", started.elapsed());

    let (small_kib, large_kib) = (baseline.peak_rss_kib(), console.peak_rss_kib());
    eprintln!("peak RSS: {small_kib} KiB over {SMALL} letters, {large_kib} KiB over {n}");
    assert!(
        large_kib < small_kib + bound_kib(),
        "the console's memory grows with the DLQ: {small_kib} KiB over {SMALL}, {large_kib} KiB over {n}"
    );
    k.topics().unwrap().delete(&[&small]).await.unwrap();
}
