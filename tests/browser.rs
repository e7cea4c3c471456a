//! A real browser against the server: headless Chromium opens `wss://` connections to a native
//! echo route and a plugin route, both with permessage-deflate, over TLS with a certificate made
//! for the test and trusted by that browser alone (`--ignore-certificate-errors-spki-list`), and
//! checks the echoes and the negotiated extension. The page reports its verdict by joining the
//! chat route with it as its nick, which the test watches.
//!
//! `#[ignore]`d in a plain `cargo test` (it needs Chromium: Debian's `chromium` package, which
//! `.ci/run` installs); `.ci/run` runs it with `--include-ignored`, where a missing browser fails.

use std::process::{Command, Stdio};
use std::time::Duration;

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;
use wsplug_tests::{TempDir, TestServer};

const PAGE: &str = r#"<!doctype html><html><body><script>
function check(path) {
  return new Promise((resolve) => {
    const ws = new WebSocket(`wss://${location.host}${path}`);
    const long = "compress me, ".repeat(500);
    const got = [];
    ws.onopen = () => { ws.send(long); ws.send("short"); };
    ws.onmessage = (e) => {
      got.push(e.data);
      if (got.length === 2) {
        const deflate = ws.extensions.startsWith("permessage-deflate");
        resolve(got[0] === long && got[1] === "short" ? (deflate ? "ok" : "nodeflate") : "wrongecho");
        ws.close(1000);
      }
    };
    ws.onerror = () => resolve("error");
  });
}
Promise.all([check("/native"), check("/plugin")]).then(([native, plugin]) => {
  new WebSocket(`wss://${location.host}/chat?nick=n-${native}.p-${plugin}&room=verdicts`);
});
</script></body></html>"#;

/// base64(SHA-256(SubjectPublicKeyInfo)): how Chromium is told to trust one certificate.
fn spki_pin(key: &rcgen::KeyPair) -> String {
    use base64::Engine as _;
    use rcgen::PublicKeyData as _;
    let digest = ring::digest::digest(&ring::digest::SHA256, &key.subject_public_key_info());
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|name| Command::new(name).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok())
}

#[tokio::test]
#[ignore = "needs Chromium (installed by .ci/run)"]
async fn chromium_talks_wss_with_permessage_deflate_to_native_and_plugin_routes() {
    let browser = chromium().expect("Chromium is not installed (Debian: apt-get install chromium)");
    let dir = TempDir::new("browser");
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(dir.join("cert.pem"), generated.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), generated.signing_key.serialize_pem()).unwrap();
    std::fs::create_dir_all(dir.join("static")).unwrap();
    std::fs::write(dir.join("static").join("check.html"), PAGE).unwrap();
    let echo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins/echo.wasm");
    let config = dir.join("wsplug.toml");
    std::fs::write(
        &config,
        format!(
            "static_dir = \"static\"\ntls = {{ cert = \"cert.pem\", key = \"key.pem\" }}\n\n\
             [[routes]]\npath = \"/native\"\nkind = \"echo\"\n[routes.deflate]\n\n\
             [[routes]]\npath = \"/plugin\"\nplugin = {:?}\n[routes.deflate]\n\n\
             [[routes]]\npath = \"/chat\"\nplugin = \"builtin:chat\"\n",
            echo.display().to_string()
        ),
    )
    .unwrap();
    let server = TestServer::from_file(&config, false).await;
    // The watcher waits in the room where the page reports (over TLS too: the listener speaks only TLS).
    let tls = tls_to(server.addr, &generated.cert).await;
    let url = format!("wss://localhost:{}/chat?nick=watcher&room=verdicts", server.addr.port());
    let (mut watcher, _) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    let mut child = Command::new(browser)
        .args(["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions"])
        .arg(format!("--ignore-certificate-errors-spki-list={}", spki_pin(&generated.signing_key)))
        .arg(format!("--user-data-dir={}", dir.join("profile").display()))
        .arg(format!("https://localhost:{}/check.html", server.addr.port()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start Chromium");
    let verdict = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(Ok(Message::Text(text))) = watcher.next().await {
            let event: serde_json::Value = serde_json::from_str(&text).unwrap();
            if event["type"] == "join" {
                return event["nick"].as_str().unwrap_or_default().to_owned();
            }
        }
        String::new()
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(verdict.as_deref(), Ok("n-ok.p-ok"), "the page's verdict (native, plugin)");
}

async fn tls_to(
    addr: std::net::SocketAddr,
    cert: &rcgen::Certificate,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use tokio_rustls::rustls;
    let config = wsplug_tests::tls_client_config(&[cert.der()]);
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.unwrap()
}
