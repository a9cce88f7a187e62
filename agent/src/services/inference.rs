//! `ward.inference.InferenceService` (`protos/proto/ward_inference.proto`): the inference API
//! over ttrpc. Each call becomes the HTTP request it stands for and is answered by the
//! listener's own inference router ([`crate::inference_api`]), so the OpenAI mapping, the
//! encryption, the encrypted-only gate and the audit entry are exactly the HTTP API's; the reply
//! carries the HTTP status, content type and body unchanged. Never looks into a body.

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{HeaderValue, Method, header};
use base64::Engine as _;
use futures_util::StreamExt as _;
use tower::ServiceExt as _;
use ttrpc::asynchronous::{ServerStreamSender, TtrpcContext};
use ttrpc::{Code, Error};
use ward_protos::ward_inference::{
    AttestationRequest, InferenceRequest, InferenceResponse, ListModelsRequest,
};
use ward_protos::ward_inference_ttrpc::InferenceService;

use crate::inference_api::Transport;

/// The largest reply body a unary call returns (ttrpc's own message limit is 4 MiB).
const MAX_UNARY_BODY: usize = (4 << 20) - 4096;

pub(super) struct Inference {
    /// The inference routes of the listener this instance serves.
    router: axum::Router,
}

fn status(code: Code, message: impl Into<String>) -> Error {
    Error::RpcStatus(ttrpc::get_status(code, message.into()))
}

impl Inference {
    pub(super) fn new(router: axum::Router) -> Inference {
        Inference { router }
    }

    /// Answers `method uri` with `body` through the router, as an HTTP request would be.
    async fn call(
        &self,
        method: Method,
        uri: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> ttrpc::Result<axum::response::Response> {
        let content_type = match content_type {
            "" => HeaderValue::from_static("application/json"),
            ct => HeaderValue::from_str(ct)
                .map_err(|_| status(Code::INVALID_ARGUMENT, "content_type is not a media type"))?,
        };
        let mut req = axum::http::Request::builder()
            .method(method)
            .uri(uri)
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from(body))
            .map_err(|e| status(Code::INTERNAL, e.to_string()))?;
        req.extensions_mut().insert(Transport::Ttrpc);
        // The router's error type is Infallible.
        match self.router.clone().oneshot(req).await {
            Ok(response) => Ok(response),
            Err(never) => match never {},
        }
    }

    /// The whole response in one reply.
    async fn unary(
        &self,
        method: Method,
        uri: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> ttrpc::Result<InferenceResponse> {
        let response = self.call(method, uri, content_type, body).await?;
        let (parts, body) = response.into_parts();
        let body = axum::body::to_bytes(body, MAX_UNARY_BODY)
            .await
            .map_err(|e| {
                status(
                    Code::RESOURCE_EXHAUSTED,
                    format!("the response does not fit one message ({e}); use the Stream call"),
                )
            })?;
        Ok(reply(&parts, body.to_vec()))
    }

    /// The response frame by frame, as it is produced.
    async fn streamed(
        &self,
        uri: &str,
        req: InferenceRequest,
        sink: ServerStreamSender<InferenceResponse>,
    ) -> ttrpc::Result<()> {
        let response = self
            .call(Method::POST, uri, &req.content_type, req.body)
            .await?;
        let (parts, body) = response.into_parts();
        let mut frames = body.into_data_stream();
        let mut first = true;
        while let Some(frame) = frames.next().await {
            let data = frame.map_err(|e| status(Code::INTERNAL, e.to_string()))?;
            let message = if first {
                reply(&parts, data.to_vec())
            } else {
                InferenceResponse {
                    body: data.to_vec(),
                    ..Default::default()
                }
            };
            first = false;
            // An error here means the client went away: dropping the body cancels generation.
            sink.send(&message).await?;
        }
        if first {
            sink.send(&reply(&parts, Vec::new())).await?;
        }
        Ok(())
    }
}

fn reply(parts: &axum::http::response::Parts, body: Vec<u8>) -> InferenceResponse {
    InferenceResponse {
        status: u32::from(parts.status.as_u16()),
        content_type: parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string(),
        body,
        ..Default::default()
    }
}

#[async_trait]
impl InferenceService for Inference {
    async fn list_models(
        &self,
        _ctx: &TtrpcContext,
        _req: ListModelsRequest,
    ) -> ttrpc::Result<InferenceResponse> {
        self.unary(Method::GET, "/v1/models", "", Vec::new()).await
    }

    async fn attestation(
        &self,
        _ctx: &TtrpcContext,
        req: AttestationRequest,
    ) -> ttrpc::Result<InferenceResponse> {
        let nonce = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&req.nonce);
        let uri = format!("/v1/attestation?nonce={nonce}");
        self.unary(Method::GET, &uri, "", Vec::new()).await
    }

    async fn chat_completion(
        &self,
        _ctx: &TtrpcContext,
        req: InferenceRequest,
    ) -> ttrpc::Result<InferenceResponse> {
        let uri = "/v1/chat/completions";
        self.unary(Method::POST, uri, &req.content_type, req.body)
            .await
    }

    async fn completion(
        &self,
        _ctx: &TtrpcContext,
        req: InferenceRequest,
    ) -> ttrpc::Result<InferenceResponse> {
        let uri = "/v1/completions";
        self.unary(Method::POST, uri, &req.content_type, req.body)
            .await
    }

    async fn chat_completion_stream(
        &self,
        _ctx: &TtrpcContext,
        req: InferenceRequest,
        sink: ServerStreamSender<InferenceResponse>,
    ) -> ttrpc::Result<()> {
        self.streamed("/v1/chat/completions", req, sink).await
    }

    async fn completion_stream(
        &self,
        _ctx: &TtrpcContext,
        req: InferenceRequest,
        sink: ServerStreamSender<InferenceResponse>,
    ) -> ttrpc::Result<()> {
        self.streamed("/v1/completions", req, sink).await
    }
}
