//! A tiny W3C WebDriver client over the `reqwest` the tests already have, for
//! driving real headless Chromium through `chromedriver`.
//!
//! It covers what the dashboard test needs (open a page, run a script, find,
//! click and type into elements, take screenshots) and nothing more, which
//! keeps a WebDriver crate and its dependencies out of the build. Every wait
//! is bounded by time. The browser session and the driver process are ended
//! on drop, even when a test fails, so no browser outlives its test.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

/// Where the browser and its driver are, or why they cannot be used.
pub struct Browser {
    /// The `chromedriver` executable.
    pub driver: PathBuf,
    /// The Chromium executable.
    pub chromium: PathBuf,
}

impl Browser {
    /// Finds `chromedriver` and Chromium: `CHROMEDRIVER` and `CHROME_BIN` if
    /// set, else the usual names on `PATH` (Debian's `chromium-driver` and
    /// `chromium` packages install `chromedriver` and `chromium`).
    pub fn find() -> std::result::Result<Browser, String> {
        let driver = from_env_or_path("CHROMEDRIVER", &["chromedriver"])
            .ok_or("no chromedriver (set CHROMEDRIVER or install Debian's chromium-driver)")?;
        let chromium = from_env_or_path("CHROME_BIN", &["chromium", "chromium-browser", "google-chrome"])
            .ok_or("no Chromium (set CHROME_BIN or install Debian's chromium)")?;
        Ok(Browser { driver, chromium })
    }
}

fn from_env_or_path(variable: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(variable).map(PathBuf::from) {
        return path.is_file().then_some(path);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).flat_map(|dir| names.iter().map(move |n| dir.join(n))).find(|p| p.is_file())
}

/// A browser session.
pub struct Session {
    driver: Child,
    base: String,
    id: String,
    http: reqwest::Client,
}

/// A reference to an element on the page.
#[derive(Clone, Debug)]
pub struct Element {
    /// The W3C element identifier the driver used (a fixed, odd-looking string).
    key: String,
    id: String,
}

impl Session {
    /// Starts `chromedriver` on a free loopback port and opens a headless
    /// Chromium session with a window of `width` x `height`.
    pub async fn start(browser: &Browser, width: u32, height: u32) -> Result<Session> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let driver = Command::new(&browser.driver)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", browser.driver.display()))?;
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?;
        let base = format!("http://127.0.0.1:{port}");
        let mut session = Session { driver, base, id: String::new(), http };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = session.http.get(format!("{}/status", session.base)).send().await;
            if let Ok(reply) = ready {
                if reply.json::<Value>().await.is_ok_and(|v| v["value"]["ready"] == true) {
                    break;
                }
            }
            if Instant::now() > deadline {
                bail!("chromedriver did not become ready on port {port}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": browser.chromium.display().to_string(),
                // No sandbox: CI runs as root in a container, where Chromium's sandbox cannot start.
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--hide-scrollbars", format!("--window-size={width},{height}")],
            },
        }}});
        let created = session.call("POST", "/session", Some(capabilities)).await?;
        session.id = created["sessionId"].as_str().ok_or_else(|| anyhow!("no session id in {created}"))?.to_string();
        session.call_session("POST", "/window/rect", Some(json!({"width": width, "height": height}))).await?;
        Ok(session)
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let request = match method {
            "GET" => self.http.get(&url),
            "DELETE" => self.http.delete(&url),
            _ => self.http.post(&url).json(&body.unwrap_or_else(|| json!({}))),
        };
        let reply = request.send().await.with_context(|| format!("{method} {path}"))?;
        let status = reply.status();
        let value: Value = reply.json().await.with_context(|| format!("{method} {path}: not JSON"))?;
        if !status.is_success() {
            bail!(
                "{method} {path}: HTTP {status}: {}",
                value["value"]["message"].as_str().unwrap_or(&value.to_string())
            );
        }
        Ok(value["value"].clone())
    }

    async fn call_session(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        self.call(method, &format!("/session/{}{path}", self.id), body).await
    }

    /// Opens `url` and waits for the page to load.
    pub async fn goto(&self, url: &str) -> Result<()> {
        self.call_session("POST", "/url", Some(json!({ "url": url }))).await.map(|_| ())
    }

    /// Runs `script` (a function body; `arguments` holds `args`) and returns its result.
    pub async fn execute(&self, script: &str, args: Vec<Value>) -> Result<Value> {
        self.call_session("POST", "/execute/sync", Some(json!({ "script": script, "args": args }))).await
    }

    /// The first element matching a CSS selector.
    pub async fn find(&self, css: &str) -> Result<Element> {
        let found = self.call_session("POST", "/element", Some(json!({"using": "css selector", "value": css}))).await?;
        // The reference is the object's one member, named by the W3C element identifier.
        found
            .as_object()
            .and_then(|o| o.iter().next())
            .and_then(|(key, id)| Some(Element { key: key.clone(), id: id.as_str()?.to_string() }))
            .ok_or_else(|| anyhow!("no element {css}: {found}"))
    }

    /// Clicks an element, first scrolled to the middle of the window so sticky headers cannot cover it.
    pub async fn click(&self, element: &Element) -> Result<()> {
        let reference = json!({ element.key.clone(): element.id });
        self.execute("arguments[0].scrollIntoView({block: 'center'})", vec![reference]).await?;
        self.call_session("POST", &format!("/element/{}/click", element.id), None).await.map(|_| ())
    }

    /// Types `text` into an element.
    pub async fn type_text(&self, element: &Element, text: &str) -> Result<()> {
        self.call_session("POST", &format!("/element/{}/value", element.id), Some(json!({ "text": text })))
            .await
            .map(|_| ())
    }

    /// Polls `script` until it returns something truthy (not null, false, 0
    /// or ""), and returns that; fails with `what` and the last value after `limit`.
    pub async fn wait_for(&self, what: &str, limit: Duration, script: &str) -> Result<Value> {
        let deadline = Instant::now() + limit;
        let mut last = Value::Null;
        while Instant::now() < deadline {
            match self.execute(script, vec![]).await {
                Ok(value) if truthy(&value) => return Ok(value),
                Ok(value) => last = value,
                Err(err) => last = json!(err.to_string()),
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        bail!("timed out after {limit:?} waiting for {what}; last result: {last}")
    }

    /// Saves a PNG screenshot of the window to `path`.
    pub async fn screenshot(&self, path: &Path) -> Result<()> {
        let encoded = self.call_session("GET", "/screenshot", None).await?;
        let bytes = base64_decode(encoded.as_str().ok_or_else(|| anyhow!("screenshot is not a string"))?)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
    }

    /// Ends the session and the driver.
    pub async fn quit(mut self) {
        let _ = self.call("DELETE", &format!("/session/{}", self.id), None).await;
        self.id.clear();
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Ask the driver to close the browser (a blocking request, as Drop cannot await),
        // then stop the driver itself: killing only the driver could leave Chromium running.
        if !self.id.is_empty() {
            let address = self.base.trim_start_matches("http://").to_string();
            if let Ok(mut stream) = std::net::TcpStream::connect(&address) {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                let request =
                    format!("DELETE /session/{} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n", self.id);
                if stream.write_all(request.as_bytes()).is_ok() {
                    let _ = stream.read_to_end(&mut Vec::new());
                }
            }
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        _ => true,
    }
}

/// Standard base64 (with padding), as WebDriver sends screenshots.
fn base64_decode(text: &str) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for byte in text.bytes().filter(|b| !b.is_ascii_whitespace() && *b != b'=') {
        let value = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => bail!("not base64: byte {byte}"),
        };
        buffer = (buffer << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes_padded_and_unpadded_input() {
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("aGVsbG8h").unwrap(), b"hello!");
        assert_eq!(base64_decode("iVBORw0KGgo=").unwrap(), b"\x89PNG\r\n\x1a\n");
        assert!(base64_decode("a*b").is_err());
    }

    #[test]
    fn truthiness_follows_javascript() {
        assert!(!truthy(&json!(null)) && !truthy(&json!(false)) && !truthy(&json!(0)) && !truthy(&json!("")));
        assert!(truthy(&json!(1)) && truthy(&json!("x")) && truthy(&json!([])) && truthy(&json!({})));
    }
}
