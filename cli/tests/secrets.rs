//! Passwords never show and percent-encoded ones work: the CLI against the
//! real RabbitMQ (AMQP and management API), URLs from flags and from the
//! environment.

mod common;

use std::process::Output;

use backstop_rabbitmq::RabbitMq;
use backstop_rabbitmq::lapin::options::QueueDeclareOptions;
use backstop_rabbitmq::lapin::types::FieldTable;
use common::*;

/// `url` with every byte of its password percent-encoded (`guest` → `%67%75…`).
fn encode_password(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("scheme://");
    let (userinfo, host) = rest.rsplit_once('@').expect("user:password@host");
    let (user, password) = userinfo.split_once(':').expect("user:password");
    let encoded: String = password.bytes().map(|b| format!("%{b:02X}")).collect();
    format!("{scheme}://{user}:{encoded}@{host}")
}

/// Runs the binary with `env` set and the broker variables of the test
/// environment removed; returns its output.
fn cli_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_backstop"));
    command
        .args(args)
        .env_remove("BACKSTOP_AMQP_URL")
        .env_remove("BACKSTOP_KAFKA_BROKERS")
        .env_remove("BACKSTOP_RABBITMQ_API");
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().expect("run backstop")
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

const API: &str = "http://guest:guest@127.0.0.1:15672";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn percent_encoded_passwords_work_from_flags_and_the_environment() {
    let p = unique("sec");
    let rabbit = RabbitMq::connect(amqp()).await.unwrap();
    let ch = rabbit.channel().await.unwrap();
    let dlq = format!("{p}.dlq");
    ch.queue_declare(
        dlq.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();

    // The management API: the password decoded before basic auth, from the
    // flag and from BACKSTOP_RABBITMQ_API.
    let api = encode_password(API);
    let by_flag = cli_env(
        &["doctor", "--json", "--rabbitmq-api", &api, "--prefix", &p],
        &[],
    );
    assert!(by_flag.status.success(), "{}", text(&by_flag));
    let by_env = cli_env(
        &["doctor", "--json", "--prefix", &p],
        &[("BACKSTOP_RABBITMQ_API", &api)],
    );
    assert!(by_env.status.success(), "{}", text(&by_env));

    // AMQP from BACKSTOP_AMQP_URL, password percent-encoded; no URL on argv.
    let url = encode_password(&amqp());
    let list = cli_env(
        &["dlq", "list", "--queue", &p],
        &[("BACKSTOP_AMQP_URL", &url)],
    );
    assert!(list.status.success(), "{}", text(&list));
    assert!(
        String::from_utf8_lossy(&list.stdout).contains("0 message(s)"),
        "{}",
        text(&list)
    );
    // Both brokers in the environment: --queue picks RabbitMQ.
    let both = cli_env(
        &["dlq", "list", "--queue", &p],
        &[
            ("BACKSTOP_AMQP_URL", &url),
            ("BACKSTOP_KAFKA_BROKERS", "127.0.0.1:1"),
        ],
    );
    assert!(both.status.success(), "{}", text(&both));

    ch.queue_delete(dlq.as_str().into(), Default::default())
        .await
        .unwrap();
    rabbit.close().await;
}

#[test]
fn wrong_passwords_with_at_colon_and_percent_never_show() {
    let secret = "wr@ng:pa%55ss";
    for (args, env) in [
        (
            vec![
                "dlq",
                "list",
                "--amqp",
                "amqp://guest:wr@ng:pa%55ss@127.0.0.1:5672/%2f",
                "--queue",
                "q",
            ],
            vec![],
        ),
        (
            vec!["dlq", "list", "--queue", "q"],
            vec![("BACKSTOP_AMQP_URL", "amqp:guest:wr@ng:pa%55ss@127.0.0.1")],
        ),
        (
            vec![
                "doctor",
                "--rabbitmq-api",
                "http://guest:wr@ng:pa%55ss@127.0.0.1:15672",
            ],
            vec![],
        ),
    ] {
        let out = cli_env(&args, &env);
        let shown = text(&out);
        assert_eq!(out.status.code(), Some(1), "{shown}");
        for part in [secret, "ng:pa", "pa%55ss", "55ss"] {
            assert!(!shown.contains(part), "{part:?} shown: {shown}");
        }
    }
}

#[test]
fn times_without_an_offset_are_refused() {
    let out = cli_env(
        &[
            "replay",
            "--kafka",
            "127.0.0.1:1",
            "--topic",
            "t",
            "--group",
            "g",
            "--from-time",
            "2024-05-01T12:00:00",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("has no UTC offset"),
        "{}",
        text(&out)
    );
}
