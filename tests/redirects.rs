//! No HTTP client that carries a secret or token follows a redirect, over real loopback sockets:
//! an Entra authority answering the token request with 307 to another listener, and an F&O
//! environment answering 302/307, never get the client secret or the access token sent on; the
//! error says what happened. URLs with userinfo are redacted in errors.

#![cfg(feature = "sandbox")]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use ml_connector::d365::{AuthError, D365Client, D365Error, D365Settings};
use ml_connector::looker::{LookerClient, LookerSettings};
use ml_connector::secrets::Secret;

const SECRET: &str = "s3cret-VALUE-never-elsewhere";
const TOKEN: &str = "tok-3f9a-never-elsewhere";

/// One request a listener received.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    headers: String,
    body: String,
}

impl Seen {
    fn carries(&self, needle: &str) -> bool {
        self.headers.contains(needle) || self.body.contains(needle) || self.path.contains(needle)
    }
}

/// What a test listener does with a request.
#[derive(Clone)]
enum Behaviour {
    /// Answer every request with this redirect.
    Redirect(StatusCode, String),
    /// Answer `POST …/token` with a token (an Entra authority that works).
    Token,
    /// Record and answer 200 `{}` (the place a redirect leads to).
    Sink,
    /// Requests to paths starting with `/steal` are a sink; every other one is redirected there
    /// (a same-origin redirect: an HTTP client that follows it keeps the Authorization header).
    SameOrigin(StatusCode),
}

#[derive(Clone)]
struct Listener {
    behaviour: Behaviour,
    seen: Arc<Mutex<Vec<Seen>>>,
}

async fn handle(
    State(l): State<Listener>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let seen = Seen {
        method,
        path: uri.to_string(),
        headers: format!("{headers:?}"),
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    let path = uri.path().to_string();
    l.seen.lock().expect("mutex").push(seen);
    match l.behaviour {
        Behaviour::Redirect(status, location) => {
            (status, [("location", location)], "").into_response()
        }
        Behaviour::Token => (
            StatusCode::OK,
            [("content-type", "application/json")],
            format!(r#"{{"token_type":"Bearer","expires_in":3600,"access_token":"{TOKEN}"}}"#),
        )
            .into_response(),
        Behaviour::Sink => {
            (StatusCode::OK, [("content-type", "application/json")], "{}").into_response()
        }
        Behaviour::SameOrigin(status) if !path.starts_with("/steal") => {
            (status, [("location", "/steal/here".to_string())], "").into_response()
        }
        Behaviour::SameOrigin(_) => (
            StatusCode::OK,
            [("content-type", "application/json")],
            r#"{"value":[]}"#,
        )
            .into_response(),
    }
}

struct Server {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    async fn start(behaviour: Behaviour) -> Server {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new().fallback(handle).with_state(Listener {
            behaviour,
            seen: Arc::clone(&seen),
        });
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Server { addr, seen }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("mutex").clone()
    }
}

fn client(environment: &str, authority: &str) -> D365Client {
    let settings = D365Settings::new(
        environment,
        authority,
        "contoso-tenant",
        "app-client-id",
        Secret::new(SECRET),
    )
    .expect("settings");
    D365Client::new(settings).expect("client")
}

#[tokio::test]
async fn entra_307_is_not_followed_and_the_secret_stays_put() {
    let elsewhere = Server::start(Behaviour::Sink).await;
    let location = format!(
        "http://thief:pw-in-location@{}/steal?code=one-time",
        elsewhere.addr
    );
    let authority = Server::start(Behaviour::Redirect(
        StatusCode::TEMPORARY_REDIRECT,
        location,
    ))
    .await;
    let d365 = client(&elsewhere.url(), &authority.url());

    let err = d365
        .token_check()
        .await
        .expect_err("a redirect is an error");

    let asked = authority.seen();
    assert_eq!(asked.len(), 1, "one token request: {asked:?}");
    assert!(asked[0].body.contains(SECRET), "the real authority got it");
    assert!(
        elsewhere.seen().is_empty(),
        "the redirect target received a request: {:?}",
        elsewhere.seen()
    );
    match &err {
        D365Error::Auth(AuthError::Redirected {
            status, location, ..
        }) => {
            assert_eq!(*status, 307);
            assert_eq!(location, &format!("http://***@{}/steal", elsewhere.addr));
        }
        other => panic!("expected AuthError::Redirected, got {other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains("HTTP 307"), "{text}");
    assert!(
        text.contains(
            "redirects are not followed because the token request carries the client secret"
        ),
        "{text}"
    );
    for leak in [SECRET, "pw-in-location", "thief", "one-time"] {
        assert!(!text.contains(leak), "`{leak}` in: {text}");
    }
}

#[tokio::test]
async fn odata_302_is_not_followed_and_the_token_stays_put() {
    let elsewhere = Server::start(Behaviour::Sink).await;
    let authority = Server::start(Behaviour::Token).await;
    let environment = Server::start(Behaviour::Redirect(
        StatusCode::FOUND,
        format!("{}/data/DimensionParameters", elsewhere.url()),
    ))
    .await;
    let d365 = client(&environment.url(), &authority.url());

    let err = d365
        .token_check()
        .await
        .expect_err("a redirect is an error");

    let asked = environment.seen();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert!(asked[0].carries(TOKEN), "the environment got the token");
    assert!(
        elsewhere.seen().is_empty(),
        "the redirect target received a request: {:?}",
        elsewhere.seen()
    );
    match &err {
        D365Error::Redirected {
            status, location, ..
        } => {
            assert_eq!(*status, 302);
            assert_eq!(
                location,
                &format!("{}/data/DimensionParameters", elsewhere.url())
            );
        }
        other => panic!("expected D365Error::Redirected, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("redirects are not followed because the request carries the access token"),
        "{text}"
    );
    assert!(!text.contains(TOKEN), "{text}");
}

#[tokio::test]
async fn odata_same_origin_redirect_does_not_resend_the_token() {
    // A redirect within the same host and port: a client that followed it would send the
    // Authorization header again.
    let authority = Server::start(Behaviour::Token).await;
    let environment = Server::start(Behaviour::SameOrigin(StatusCode::FOUND)).await;
    let d365 = client(&environment.url(), &authority.url());

    let err = d365
        .token_check()
        .await
        .expect_err("a redirect is an error");

    let seen = environment.seen();
    assert!(
        seen.iter().all(|s| !s.path.starts_with("/steal")),
        "the redirect was followed: {seen:?}"
    );
    assert!(
        matches!(err, D365Error::Redirected { status: 302, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn redirected_write_is_an_unknown_outcome_and_is_not_resent() {
    let elsewhere = Server::start(Behaviour::Sink).await;
    let authority = Server::start(Behaviour::Token).await;
    let environment = Server::start(Behaviour::Redirect(
        StatusCode::TEMPORARY_REDIRECT,
        format!("{}/data/LedgerJournalHeaders", elsewhere.url()),
    ))
    .await;
    let d365 = client(&environment.url(), &authority.url());

    let err = d365
        .create_header("usmf", "GenJrn", "MLC abc123 test")
        .await
        .expect_err("a redirect is an error");

    let writes: Vec<Seen> = environment
        .seen()
        .into_iter()
        .filter(|s| s.method == Method::POST)
        .collect();
    assert_eq!(writes.len(), 1, "one write, not resent: {writes:?}");
    assert!(
        elsewhere.seen().is_empty(),
        "the redirect target received the write: {:?}",
        elsewhere.seen()
    );
    match &err {
        D365Error::OutcomeUnknown { detail, .. } => {
            assert!(detail.contains("HTTP 307"), "{detail}");
            assert!(detail.contains("not followed"), "{detail}");
        }
        other => panic!("expected an unknown outcome (reconcile first), got {other:?}"),
    }
}

#[tokio::test]
async fn looker_login_redirect_is_not_followed() {
    let elsewhere = Server::start(Behaviour::Sink).await;
    let looker = Server::start(Behaviour::Redirect(
        StatusCode::TEMPORARY_REDIRECT,
        format!("http://thief:pw-in-location@{}/login?x=1", elsewhere.addr),
    ))
    .await;
    let settings =
        LookerSettings::new(&looker.url(), "api-client-id", Secret::new(SECRET)).expect("settings");
    let err = LookerClient::new(settings)
        .expect("client")
        .login_check()
        .await
        .expect_err("a redirect is an error")
        .to_string();
    assert!(
        elsewhere.seen().is_empty(),
        "the redirect target received a request: {:?}",
        elsewhere.seen()
    );
    assert!(err.contains("redirects are not followed"), "{err}");
    assert!(
        err.contains(&format!("http://***@{}/login", elsewhere.addr)),
        "{err}"
    );
    for leak in [SECRET, "pw-in-location", "thief"] {
        assert!(!err.contains(leak), "`{leak}` in: {err}");
    }
}

#[test]
fn endpoint_urls_with_userinfo_are_redacted_in_errors() {
    // Plain http to a remote host is refused; the error shows the URL without its password.
    let err = D365Settings::new(
        "http://svc-user:hunter2@contoso.operations.dynamics.com",
        "https://login.microsoftonline.com",
        "contoso-tenant",
        "app-client-id",
        Secret::new(SECRET),
    )
    .expect_err("http to a remote host is refused")
    .to_string();
    assert!(err.contains("must use https"), "{err}");
    assert!(
        err.contains("http://***@contoso.operations.dynamics.com"),
        "{err}"
    );
    assert!(
        !err.contains("hunter2") && !err.contains("svc-user"),
        "{err}"
    );

    let err = D365Settings::new(
        "https://svc-user:hunter2@contoso.operations.dynamics.com/?x=1",
        "https://login.microsoftonline.com",
        "contoso-tenant",
        "app-client-id",
        Secret::new(SECRET),
    )
    .expect_err("a query is refused")
    .to_string();
    assert!(
        !err.contains("hunter2") && !err.contains("svc-user"),
        "{err}"
    );

    let err = D365Settings::new(
        "https://contoso.operations.dynamics.com",
        "http://svc-user:hunter2@login.example.com",
        "contoso-tenant",
        "app-client-id",
        Secret::new(SECRET),
    )
    .expect_err("http authority is refused")
    .to_string();
    assert!(
        !err.contains("hunter2") && !err.contains("svc-user"),
        "{err}"
    );

    let err = LookerSettings::new(
        "http://api-user:hunter2@acme.cloud.looker.com",
        "id",
        Secret::new(SECRET),
    )
    .expect_err("http to a remote host is refused")
    .to_string();
    assert!(
        !err.contains("hunter2") && !err.contains("api-user"),
        "{err}"
    );
}

#[tokio::test]
async fn unreachable_authority_with_userinfo_is_redacted() {
    // Nothing listens on this port once the listener is dropped.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let mut settings = D365Settings::new(
        "https://contoso.operations.dynamics.com",
        &format!("http://svc-user:hunter2@127.0.0.1:{port}"),
        "contoso-tenant",
        "app-client-id",
        Secret::new(SECRET),
    )
    .expect("loopback http is allowed");
    settings.retry.max_attempts = 1;
    let err = D365Client::new(settings)
        .expect("client")
        .token_check()
        .await
        .expect_err("nothing listens")
        .to_string();
    assert!(err.contains("could not reach Microsoft Entra ID"), "{err}");
    assert!(
        err.contains(&format!("http://***@127.0.0.1:{port}")),
        "{err}"
    );
    assert!(
        !err.contains("hunter2") && !err.contains("svc-user"),
        "{err}"
    );
}
