//! TLS on the listener (`tls = { cert, key }`), with certificates generated at test time: `wss://`
//! end to end on the native and the plugin route (ALPN `http/1.1`), a renewed certificate taken
//! live without dropping an open connection, a plain-HTTP client on the TLS port turned away
//! cleanly, and files that cannot be used refused at start with the file and the reason.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_tungstenite::tungstenite::Message;
use wsplug::Server;
use wsplug::config::Config;
use wsplug_tests::{STEP, TempDir, TestServer, assert_echo, tls_client_config};

/// A self-signed certificate for 127.0.0.1 and localhost: (certificate PEM, key PEM, DER).
fn certificate() -> (String, String, CertificateDer<'static>) {
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let generated = rcgen::generate_simple_self_signed(names).unwrap();
    let der = generated.cert.der().clone();
    (generated.cert.pem(), generated.signing_key.serialize_pem(), der)
}

fn write_pair(dir: &Path, (cert, key, _): &(String, String, CertificateDer<'static>)) {
    std::fs::write(dir.join("cert.pem"), cert).unwrap();
    std::fs::write(dir.join("key.pem"), key).unwrap();
}

const ROUTES: &str = "tls = { cert = \"cert.pem\", key = \"key.pem\" }\n\n\
    [[routes]]\npath = \"/native\"\nkind = \"echo\"\n\n\
    [[routes]]\npath = \"/plugin\"\nplugin = \"PLUGIN\"\n";

fn config_text() -> String {
    let echo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins/echo.wasm");
    ROUTES.replace("PLUGIN", &echo.display().to_string())
}

/// A TLS connection that trusts only `cert`; returns it and the certificate the server showed.
async fn tls_connect(
    addr: std::net::SocketAddr,
    cert: &CertificateDer<'static>,
) -> (tokio_rustls::client::TlsStream<TcpStream>, Vec<u8>) {
    let config = tls_client_config(&[cert]);
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let tls = tokio::time::timeout(STEP, TlsConnector::from(config).connect(name, tcp))
        .await
        .expect("TLS handshake in time")
        .expect("TLS handshake");
    let (_, session) = tls.get_ref();
    assert_eq!(session.alpn_protocol(), Some(&b"http/1.1"[..]), "ALPN");
    let shown = session.peer_certificates().unwrap()[0].to_vec();
    (tls, shown)
}

async fn wss(
    addr: std::net::SocketAddr,
    path: &str,
    cert: &CertificateDer<'static>,
) -> (wsplug_tests::TlsClient, Vec<u8>) {
    let (tls, shown) = tls_connect(addr, cert).await;
    let url = format!("wss://localhost:{}{path}", addr.port());
    let (ws, _) = tokio::time::timeout(STEP, tokio_tungstenite::client_async(url, tls))
        .await
        .expect("WebSocket handshake in time")
        .expect("WebSocket handshake");
    (ws, shown)
}

/// A server on TLS with a fresh certificate, its files in a directory of their own.
async fn tls_server(tag: &str, watch: bool) -> (TempDir, (String, String, CertificateDer<'static>), TestServer) {
    let dir = TempDir::new(tag);
    let cert = certificate();
    write_pair(&dir.join(""), &cert);
    let config = dir.join("wsplug.toml");
    std::fs::write(&config, config_text()).unwrap();
    let server = TestServer::from_file(&config, watch).await;
    (dir, cert, server)
}

#[tokio::test]
async fn wss_end_to_end_on_both_routes_and_a_renewed_certificate_is_taken_live() {
    let (dir, first, server) = tls_server("tls", true).await;
    let big: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    for path in ["/native", "/plugin"] {
        let (mut ws, shown) = wss(server.addr, path, &first.2).await;
        assert_eq!(shown, first.2.to_vec());
        assert_echo(&mut ws, Message::text("over TLS")).await;
        assert_echo(&mut ws, Message::binary(big.clone())).await;
    }
    // Renew: new files under the same names. An open connection goes on; new ones get the new one.
    let (mut open, _) = wss(server.addr, "/native", &first.2).await;
    let second = certificate();
    let tmp = dir.join("renewing");
    std::fs::create_dir_all(&tmp).unwrap();
    write_pair(&tmp, &second);
    std::fs::rename(tmp.join("key.pem"), dir.join("key.pem")).unwrap();
    std::fs::rename(tmp.join("cert.pem"), dir.join("cert.pem")).unwrap();
    let mut renewed = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if tls_connect_either(server.addr, &first.2, &second.2).await == second.2.to_vec() {
            renewed = true;
            break;
        }
    }
    assert!(renewed, "the renewed certificate was not served within 5 s");
    assert_echo(&mut open, Message::text("still here after the renewal")).await;
    let (mut ws, _) = wss(server.addr, "/plugin", &second.2).await;
    assert_echo(&mut ws, Message::text("with the new certificate")).await;
}

/// The certificate the server shows now, trusting either of two.
async fn tls_connect_either(
    addr: std::net::SocketAddr,
    a: &CertificateDer<'static>,
    b: &CertificateDer<'static>,
) -> Vec<u8> {
    let config = tls_client_config(&[a, b]);
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake");
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test]
async fn a_plain_http_client_on_the_tls_port_is_turned_away_and_others_are_served() {
    let (_dir, cert, server) = tls_server("tls-plain", false).await;
    let mut plain = TcpStream::connect(server.addr).await.unwrap();
    plain.write_all(wsplug_tests::upgrade_request("/native").as_bytes()).await.unwrap();
    // The server answers with a TLS alert at most, then closes: never a 101, never a hang.
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the plain client was left hanging");
    assert!(!String::from_utf8_lossy(&answer).contains("101"), "{answer:?}");
    let (mut ws, _) = wss(server.addr, "/native", &cert.2).await;
    assert_echo(&mut ws, Message::text("others are served")).await;
}

#[tokio::test]
async fn unusable_certificate_files_are_refused_at_start_with_the_file_and_the_reason() {
    let dir = TempDir::new("tls-bad");
    let good = certificate();
    let other = certificate();
    let start = |cert: &str, key: &str| {
        std::fs::write(dir.join("cert.pem"), cert).unwrap();
        std::fs::write(dir.join("key.pem"), key).unwrap();
        let config = dir.join("wsplug.toml");
        std::fs::write(&config, config_text()).unwrap();
        async move {
            let mut config = Config::from_file(&config).expect("the config itself is valid");
            config.listen = "127.0.0.1:0".parse().unwrap();
            match Server::bind(&config).await {
                Ok(_) => panic!("started with unusable TLS files"),
                Err(e) => format!("{e:#}"),
            }
        }
    };
    let error = start("not a certificate\n", &good.1).await;
    assert!(error.contains("tls.cert") && error.contains("cert.pem"), "{error}");
    let error = start(&good.0, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").await;
    assert!(error.contains("tls.key") && error.contains("key.pem"), "{error}");
    let error = start(&good.0, &other.1).await;
    assert!(error.contains("does not belong to the certificate"), "{error}");
    std::fs::remove_file(dir.join("cert.pem")).unwrap();
    let config = dir.join("wsplug.toml");
    let mut config = Config::from_file(&config).unwrap();
    config.listen = "127.0.0.1:0".parse().unwrap();
    let error = format!("{:#}", Server::bind(&config).await.err().expect("missing file refused"));
    assert!(error.contains("tls.cert") && error.contains("No such file"), "{error}");
}
