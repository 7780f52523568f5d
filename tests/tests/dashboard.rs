//! The live dashboard in real headless Chromium, as an operator uses it:
//! start `meridian demo` with three regions, open the dashboard, see three
//! regions and the matrix converge, unlock the controls with the admin
//! token, cut a region's links with the buttons, watch the links drawn cut
//! and its staleness rise, heal, and see CONVERGED again. Screenshots (light
//! and dark) go to `target/dashboard-screenshots/` for people to look at.
//!
//! Without Chromium and chromedriver the test says it was skipped and why,
//! and passes, unless `MERIDIAN_REQUIRE_BROWSER=1` (as in `.ci/run`) makes
//! their absence a failure.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use meridian_tests::webdriver::{Browser, Session};
use meridian_tests::{meridian_binary, TempDir};
use serde_json::{json, Value};

/// Where screenshots go: `target/dashboard-screenshots`, next to the build.
fn screenshot_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> -> target
    let target = exe.ancestors().nth(3).map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    target.join("dashboard-screenshots")
}

fn free_tcp_base() -> u16 {
    // Three consecutive free HTTP ports, their +100 for QUIC, and base-1 for the control endpoint.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let base = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if !(2000..60000).contains(&base) {
            continue;
        }
        let all_free = (base - 1..base + 3).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
            && (base + 100..base + 103).all(|p| std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok());
        if all_free {
            return base;
        }
    }
    panic!("no free run of ports found");
}

/// The demo supervisor, stopped with SIGINT (its Ctrl-C) when dropped.
struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-INT").arg(self.0.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_demo(dir: &std::path::Path, base: u16) -> Demo {
    let mut child = Command::new(meridian_binary())
        .args(["demo", "--base-port", &base.to_string()])
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start meridian demo");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let demo = Demo(child);
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            if line.starts_with("Ctrl-C stops every region") {
                // Keep draining, so the demo never blocks on a full pipe.
                std::thread::spawn(move || while rx.recv().is_ok() {});
                return demo;
            }
        }
    }
    panic!("the demo did not print its banner within 90 s");
}

const HEADLINE: &str = "return document.querySelector('[data-testid=headline]')?.textContent";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_a_cut_and_its_healing_in_a_real_browser() {
    let required = std::env::var("MERIDIAN_REQUIRE_BROWSER").is_ok_and(|v| v == "1");
    let browser = match Browser::find() {
        Ok(browser) => browser,
        Err(why) if !required => {
            eprintln!(
                "SKIPPED the dashboard browser test: {why}. Set MERIDIAN_REQUIRE_BROWSER=1 to make this a failure."
            );
            return;
        }
        Err(why) => panic!("MERIDIAN_REQUIRE_BROWSER=1 but {why}"),
    };
    let started = Instant::now();
    let step = |what: &str| eprintln!("[dashboard test] {:>5.1} s  {what}", started.elapsed().as_secs_f64());
    let shots = screenshot_dir();
    let _ = std::fs::remove_dir_all(&shots);
    let dir = TempDir::new("dashboard");
    let base = free_tcp_base();
    let demo = start_demo(dir.path(), base);
    let token = std::fs::read_to_string(dir.path().join("admin.token")).expect("admin token").trim().to_string();
    let url = format!("http://127.0.0.1:{base}");
    let client = reqwest::Client::new();
    for i in 0..5 {
        let region = format!("http://127.0.0.1:{}", base + (i % 3));
        let written = client
            .put(format!("{region}/v1/docs/dash/{i}"))
            .json(&json!({"n": i, "from": region}))
            .send()
            .await
            .unwrap();
        assert!(written.status().is_success());
    }

    step("demo started");
    let session = Session::start(&browser, 1440, 1100).await.expect("start headless Chromium");
    step("browser started");
    session.goto(&format!("{url}/?theme=light")).await.unwrap();
    step("page loaded");
    let long = Duration::from_secs(30);
    session
        .wait_for(
            "three regions in the topology and a 3x3 matrix",
            long,
            "return document.querySelectorAll('#topology [data-region]').length === 3
                && document.querySelectorAll('[data-testid=matrix] tbody tr').length === 3
                && document.querySelectorAll('[data-testid=matrix] tbody td.cell').length === 9
                && document.querySelectorAll('#regions .card').length === 3",
        )
        .await
        .unwrap();
    session.wait_for("CONVERGED", long, &format!("{HEADLINE} === 'CONVERGED'")).await.unwrap();
    // Writes made while the page is open show up in the propagation panel.
    for i in 0..3 {
        client.put(format!("{url}/v1/docs/dash/live{i}")).json(&json!({"i": i})).send().await.unwrap();
        tokio::time::sleep(Duration::from_millis(800)).await;
    }
    session
        .wait_for(
            "a write reaching every region in the propagation panel",
            long,
            "return [...document.querySelectorAll('#propagation tbody tr')].some(tr => tr.querySelectorAll('.prop-ms').length === 2)",
        )
        .await
        .unwrap();
    step("converged, propagation shown");
    session.screenshot(&shots.join("01-converged-light.png")).await.unwrap();

    // The controls stay hidden until the admin token is given.
    let hidden = session.execute("return document.getElementById('controls').hidden", vec![]).await.unwrap();
    assert_eq!(hidden, json!(true), "controls shown without a token");
    let input = session.find("#admin-token").await.unwrap();
    session.type_text(&input, &token).await.unwrap();
    session.click(&session.find("#admin-form button[type=submit]").await.unwrap()).await.unwrap();
    session
        .wait_for("the link controls", long, "return document.querySelectorAll('#link-controls tr').length === 3")
        .await
        .unwrap();

    step("controls unlocked");
    // Cut ap-southeast off, one link at a time, with the buttons.
    for link in ["us-east|ap-southeast", "eu-west|ap-southeast"] {
        let button =
            session.find(&format!("#link-controls tr[data-link='{link}'] button[data-action=cut]")).await.unwrap();
        session.click(&button).await.unwrap();
        session
            .wait_for(
                &format!("{link} drawn cut"),
                long,
                &format!("return document.querySelector(\"#topology [data-link='{link}']\")?.dataset.health === 'cut'"),
            )
            .await
            .unwrap();
    }
    // A write the isolated region cannot see: it is now behind, not merely out of touch.
    client.put(format!("{url}/v1/docs/dash/during-cut")).json(&json!({"cut": true})).send().await.unwrap();
    let staleness = "Number(document.querySelector(\"tr[data-replica='ap-southeast'] td[data-origin='us-east']\")?.dataset.stalenessMs || 0)";
    let first = session
        .wait_for("ap-southeast over 1.5 s stale", long, &format!("const ms = {staleness}; return ms > 1500 && ms"))
        .await
        .unwrap();
    let first = first.as_f64().unwrap();
    let rising = format!("return {staleness} > {first} + 500");
    session.wait_for("ap-southeast's staleness rising", long, &rising).await.unwrap();
    session.wait_for("DIVERGED", long, &format!("{HEADLINE} === 'DIVERGED'")).await.unwrap();
    step("cut, staleness rising, DIVERGED");
    session.screenshot(&shots.join("02-cut-light.png")).await.unwrap();
    session.click(&session.find("#theme").await.unwrap()).await.unwrap();
    session.wait_for("dark theme", long, "return document.documentElement.dataset.theme === 'dark'").await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    session.screenshot(&shots.join("03-cut-dark.png")).await.unwrap();

    // Heal with the button on each link, and watch it converge.
    for link in ["us-east|ap-southeast", "eu-west|ap-southeast"] {
        let button =
            session.find(&format!("#link-controls tr[data-link='{link}'] button[data-action=heal]")).await.unwrap();
        session.click(&button).await.unwrap();
        session
            .wait_for(
                &format!("{link} no longer cut"),
                long,
                &format!("return document.querySelector(\"#topology [data-link='{link}']\")?.dataset.health !== 'cut'"),
            )
            .await
            .unwrap();
    }
    session
        .wait_for("CONVERGED after heal", Duration::from_secs(60), &format!("{HEADLINE} === 'CONVERGED'"))
        .await
        .unwrap();
    step("healed, CONVERGED");
    session.screenshot(&shots.join("04-healed-dark.png")).await.unwrap();

    // The inspector shows one document at every region side by side.
    let id_input = session.find("#doc-id").await.unwrap();
    session.type_text(&id_input, "dash/1").await.unwrap();
    session.click(&session.find("#inspect-form button").await.unwrap()).await.unwrap();
    let columns = session
        .wait_for(
            "the document at three regions",
            long,
            "const cols = document.querySelectorAll('#inspector .doc-column dl'); return cols.length === 3 && cols.length",
        )
        .await
        .unwrap();
    assert_eq!(columns, json!(3));
    session.execute("document.getElementById('inspector').scrollIntoView()", vec![]).await.unwrap();
    session.screenshot(&shots.join("05-inspector-dark.png")).await.unwrap();

    // Kill a region with the demo's button: greyed with its last-seen time, then back.
    session.click(&session.find("[data-region=eu-west] button[data-action=kill]").await.unwrap()).await.unwrap();
    session
        .wait_for(
            "eu-west greyed with its last-seen time",
            long,
            "const card = document.querySelector('#regions .card-down[data-region=eu-west]');
             return !!card && card.textContent.includes('last seen')
                && !!document.querySelector('#topology .region-down[data-region=eu-west]')",
        )
        .await
        .unwrap();
    step("eu-west killed and greyed");
    session.execute("window.scrollTo(0, 0)", vec![]).await.unwrap();
    session.screenshot(&shots.join("06-region-down-dark.png")).await.unwrap();
    session.click(&session.find("[data-region=eu-west] button[data-action=restart]").await.unwrap()).await.unwrap();
    session
        .wait_for(
            "eu-west back up",
            Duration::from_secs(60),
            "return !document.querySelector('#regions .card-down') && document.querySelectorAll('#regions .card').length === 3",
        )
        .await
        .unwrap();
    session
        .wait_for("CONVERGED after restart", Duration::from_secs(60), &format!("{HEADLINE} === 'CONVERGED'"))
        .await
        .unwrap();
    step("eu-west restarted, CONVERGED");

    // Nothing the page did was refused or failed.
    let status: Value =
        session.execute("return document.getElementById('control-status').className", vec![]).await.unwrap();
    assert_ne!(status, json!("control-status error"), "a control action failed");
    session.quit().await;
    drop(demo);
    eprintln!("dashboard screenshots in {}", shots.display());
}
