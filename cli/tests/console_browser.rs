//! The console in headless Chromium (Debian's `chromium` and
//! `chromium-driver`, driven through WebDriver), one browser session for
//! the whole walk an operator takes: open the overview, filter a DLQ,
//! open a letter, redrive ten letters (a dry run, then for real) and see
//! the depth drop. Screenshots of each step are written under the target
//! folder (`<target>/tmp/console-screenshots/`); `scripts/console-screenshots.sh`
//! copies them to the README's images, so a test run never changes the tree.

mod common;

use std::time::{Duration, Instant};

use backstop::wire;
use backstop_rabbitmq::{RabbitMq, Topology};
use common::console::{Console, config};
use common::*;
use fantoccini::{Client, ClientBuilder, Locator};

/// A `chromedriver` on a free port, killed when dropped.
struct Driver {
    child: std::process::Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn driver() -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = std::process::Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect(
            "chromedriver (apt-get install chromium chromium-driver; scripts/services/all.sh does)",
        );
    let url = format!("http://127.0.0.1:{port}");
    let until = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < until, "chromedriver did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Driver { child, url }
}

async fn browser(driver: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--window-size=1400,1100"]
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a Chromium session")
}

/// Saves a screenshot of the page as `<name>.png` under the target folder.
async fn shot(c: &Client, name: &str) {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let png = c.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

/// The text of the element `css`, waiting up to 30 s for it. An element
/// replaced while it is read (the page navigating, or htmx swapping it in)
/// is found again instead of failing as stale.
async fn text(c: &Client, css: &str) -> String {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let left = until
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(200));
        let read = match c.wait().at_most(left).for_element(Locator::Css(css)).await {
            Ok(element) => element.text().await,
            Err(error) => Err(error),
        };
        match read {
            Ok(text) => return text,
            Err(_) if Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("{css}: {error}"),
        }
    }
}

/// Waits, without reloading, until the element `css` reads `want`: right
/// after a click the browser may still show the page before it.
async fn expect_text(c: &Client, css: &str, want: &str) {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let got = text(c, css).await;
        if got.trim() == want {
            return;
        }
        assert!(Instant::now() < until, "{css} reads {got:?}, not {want:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Reloads until the element `css` reads `want`.
async fn wait_text(c: &Client, css: &str, want: &str, limit: Duration) {
    let until = Instant::now() + limit;
    loop {
        let got = text(c, css).await;
        if got.trim() == want {
            return;
        }
        assert!(Instant::now() < until, "{css} reads {got:?}, not {want:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
        c.refresh().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_filters_opens_a_letter_and_redrives_ten_letters_in_a_browser() {
    let rabbit = RabbitMq::connect(&amqp()).await.unwrap();
    let q = unique("cb");
    rabbit.declare(&Topology::quorum(&q)).await.unwrap();
    let dlq = format!("{q}.dlq");
    let publisher = rabbit.publisher();
    for i in 0..30u64 {
        let mut m = letter(&q, &format!("{q}-{i}"), 4 * i + 1, 0);
        m.headers
            .insert(wire::ERROR.to_owned(), error_for(i).to_owned());
        if i.is_multiple_of(4) {
            m.headers
                .insert(wire::ERROR_KIND.to_owned(), "decode".to_owned());
        }
        publisher.publish_to_queue(&dlq, &m).await.unwrap();
    }
    publisher.close().await;
    let dir = tempfile::tempdir().unwrap();
    let console = Console::start(&config(dir.path(), &q, ""), &[]);
    let page = format!("{}/dlq/rabbitmq/{dlq}", console.base);
    console
        .wait_count(&format!("/dlq/rabbitmq/{dlq}"), 30, Duration::from_secs(60))
        .await;

    let driver = driver().await;
    let c = browser(&driver).await;
    let walk = async {
        // The overview lists the DLQ; its link opens it.
        c.goto(&console.base).await.unwrap();
        wait_text(&c, "#overview td.depth", "30", Duration::from_secs(30)).await;
        shot(&c, "overview").await;
        c.find(Locator::LinkText(&dlq))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        expect_text(&c, "#depth", "30").await;

        // Filter: permanent failures whose error says "declined".
        let kind = c.find(Locator::Css("select[name=kind]")).await.unwrap();
        kind.select_by_value("permanent").await.unwrap();
        c.find(Locator::Css("input[name=error]"))
            .await
            .unwrap()
            .send_keys("declined")
            .await
            .unwrap();
        c.find(Locator::Css("form.filters button[type=submit]"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        // i % 4 == 1 of 30
        expect_text(&c, "#count", "8").await;
        shot(&c, "dlq-filtered").await;

        // A letter.
        c.find(Locator::Css("td.id a"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let id = text(&c, "#letter-id").await;
        assert!(id.starts_with(&q), "{id}");
        assert!(text(&c, "#body").await.contains("\"n\""));
        shot(&c, "letter").await;

        // Ten letters of the whole DLQ: a dry run, then the redrive.
        c.goto(&page).await.unwrap();
        let boxes = c.find_all(Locator::Css("input[name=id]")).await.unwrap();
        assert!(boxes.len() >= 10);
        // The header box selects the page, and clears it (console.js).
        let all = c
            .find(Locator::Css("input[data-select-page]"))
            .await
            .unwrap();
        all.click().await.unwrap();
        assert_eq!(
            boxes[29].prop("checked").await.unwrap().as_deref(),
            Some("true")
        );
        all.click().await.unwrap();
        assert_eq!(
            boxes[0].prop("checked").await.unwrap().as_deref(),
            Some("false")
        );
        for b in boxes.iter().take(10) {
            b.click().await.unwrap();
        }
        c.find(Locator::Id("preview"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        expect_text(&c, "#would", "10").await;
        assert!(text(&c, "#destinations").await.contains(&q));
        shot(&c, "dry-run").await;
        assert_eq!(
            rabbit.message_count(&q).await.unwrap(),
            0,
            "the dry run sent nothing"
        );
        c.find(Locator::Id("redrive"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let until = Instant::now() + Duration::from_secs(60);
        while text(&c, "#status").await != "done" {
            assert!(Instant::now() < until, "the redrive did not finish");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        expect_text(&c, "#done", "10").await;
        shot(&c, "redrive").await;

        // The depth drops (the management API's count lags a few seconds).
        c.goto(&page).await.unwrap();
        wait_text(&c, "#depth", "20", Duration::from_secs(30)).await;
        expect_text(&c, "#count", "20").await;
        shot(&c, "dlq-after").await;
    };
    // Close the session even when a step fails.
    let result = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(walk)).await;
    c.close().await.unwrap();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
    assert_eq!(
        common::console::settled(&rabbit, &q, 10).await,
        10,
        "ten letters reached their source"
    );
}
