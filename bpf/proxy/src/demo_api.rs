//! A small real HTTP/1.1 server (hyper) playing payments-api for the tests
//! and the bench: `/api/v1/charges` and `/api/v1/refunds` answer 200 with
//! what the server received, anything else 404. It logs each request it
//! got, so a test can prove a denied request never reached it.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use http_body_util::BodyExt;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// `METHOD target body-bytes` of every request the server answered.
pub type SeenLog = Arc<Mutex<Vec<String>>>;

async fn answer(
    req: Request<hyper::body::Incoming>,
    seen: SeenLog,
) -> Result<Response<String>, Infallible> {
    let method = req.method().to_string();
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let path = req.uri().path().to_string();
    let body_len = match req.into_body().collect().await {
        Ok(body) => body.to_bytes().len(),
        Err(_) => 0,
    };
    let line = format!("{method} {target} {body_len}");
    if let Ok(mut log) = seen.lock() {
        log.push(line.clone());
    }
    let status = if path == "/api/v1/charges" || path == "/api/v1/refunds" {
        200
    } else {
        404
    };
    let mut response = Response::new(format!("{line}\n"));
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or_default();
    Ok(response)
}

/// Serves until the future is dropped.
pub async fn serve_demo_api(listener: TcpListener, seen: SeenLog) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let seen = Arc::clone(&seen);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| answer(req, Arc::clone(&seen)));
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}
