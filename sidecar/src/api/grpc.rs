//! The Dapr-style gRPC API: `Dapr/InvokeService` and
//! `DaprAppChannel/ConnectAppCallback`.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dialback_proto::common::{InvokeRequest, InvokeResponse};
use dialback_proto::runtime::dapr_app_channel_server::{DaprAppChannel, DaprAppChannelServer};
use dialback_proto::runtime::dapr_server::{Dapr, DaprServer};
use dialback_proto::runtime::{
    ConnectAppCallbackRequest, ConnectAppCallbackResponse, GetMetadataRequest, GetMetadataResponse,
    InvokeServiceRequest, SubscribeTopicEventsRequestAlpha1, SubscribeTopicEventsResponseAlpha1,
};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use crate::invoke::{ENVELOPE, invoke};
use crate::state::Sidecar;

/// `dapr.proto.runtime.v1.Dapr`.
#[derive(Clone)]
pub struct DaprApi(pub Arc<Sidecar>);

/// `dapr.proto.runtime.v1.DaprAppChannel`.
#[derive(Clone)]
pub struct AppChannelApi(pub Arc<Sidecar>);

/// The caller's `grpc-timeout` (gRPC's wire format: up to 8 digits and a
/// unit of H, M, S, m, u or n), if it sent a valid one.
pub fn grpc_timeout(md: &MetadataMap) -> Option<Duration> {
    let v = md.get("grpc-timeout")?.to_str().ok()?;
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (n, unit) = v.split_at(v.len() - 1);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[tonic::async_trait]
impl Dapr for DaprApi {
    async fn invoke_service(&self, request: Request<InvokeServiceRequest>) -> Result<Response<InvokeResponse>, Status> {
        let s = &self.0;
        // Bridge mode: another app is daprd's to reach (and this one too
        // when it speaks HTTP to daprd).
        if (request.get_ref().id != s.app_id || s.own_calls_via_daprd)
            && let Some(up) = &s.upstream_grpc
        {
            let (mut client, request) = up.client(request);
            return client.invoke_service(request).await;
        }
        let timeout =
            grpc_timeout(request.metadata()).map_or(s.limits.app_call_timeout, |t| t.min(s.limits.app_call_timeout));
        let md = super::headers::forwardable(&request.metadata().clone().into_headers(), super::token::Api::Grpc);
        let req = request.into_inner();
        let message: InvokeRequest =
            req.message.ok_or_else(|| Status::invalid_argument("InvokeServiceRequest.message is required"))?;
        if message.method.is_empty() {
            return Err(Status::invalid_argument("InvokeRequest.method is required"));
        }
        let invoked = invoke(s, &req.id, message, md, timeout).await.map_err(|e| e.to_status())?;
        let mut resp = Response::new(invoked.response);
        if let Some(v) = invoked.traceparent.and_then(|t| t.parse().ok()) {
            resp.metadata_mut().insert(crate::trace::TRACEPARENT, v);
        }
        Ok(resp)
    }

    async fn get_metadata(
        &self,
        _request: Request<GetMetadataRequest>,
    ) -> Result<Response<GetMetadataResponse>, Status> {
        Ok(Response::new(self.0.grpc_metadata()))
    }

    type SubscribeTopicEventsAlpha1Stream =
        futures_util::stream::BoxStream<'static, Result<SubscribeTopicEventsResponseAlpha1, Status>>;

    /// Standalone, there is no broker here; in bridge mode the call never
    /// reaches this: it goes on to daprd, unparsed.
    async fn subscribe_topic_events_alpha1(
        &self,
        _request: Request<tonic::Streaming<SubscribeTopicEventsRequestAlpha1>>,
    ) -> Result<Response<Self::SubscribeTopicEventsAlpha1Stream>, Status> {
        Err(Status::unimplemented("pub/sub needs a daprd behind dialbackd: start dialbackd with --dapr-upstream-grpc"))
    }
}

#[tonic::async_trait]
impl DaprAppChannel for AppChannelApi {
    async fn connect_app_callback(
        &self,
        request: Request<ConnectAppCallbackRequest>,
    ) -> Result<Response<ConnectAppCallbackResponse>, Status> {
        let s = &self.0;
        let Some(cb) = &s.callback else {
            return Err(Status::failed_precondition(
                "the callback channel is not enabled on this sidecar (--enable-callback-channel)",
            ));
        };
        let token = s
            .tokens
            .lock()
            .map_err(|_| Status::internal("token store unavailable"))?
            .issue(Instant::now(), s.token_ttl);
        let now = SystemTime::now();
        let expires = now + s.token_ttl;
        let cert = cb.issuer.credential(&request.get_ref().client_public_key, now);
        let (address, port) = match &cb.advertise {
            Some(adv) => (adv.to_string(), i32::from(adv.port)),
            None => (String::new(), i32::from(cb.listen.port())),
        };
        Ok(Response::new(ConnectAppCallbackResponse {
            port,
            transports: cb.transports.to_proto(),
            token,
            cert_sha256: cb.fingerprint.0.to_vec(),
            token_expires_unix_ms: expires.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0),
            address,
            app_id: s.app_id.clone(),
            server_name: cb.server_name.clone(),
            client_certificate_expires_unix_ms: cert.as_ref().map_or(0, |c| c.expires_unix_ms),
            client_certificate: cert.map(|c| c.cert).unwrap_or_default(),
        }))
    }
}

/// Says RESOURCE_EXHAUSTED, as grpc-go and so daprd do, where tonic's
/// decoder refuses a request over the size limit with OUT_OF_RANGE. The
/// refusal is a trailers-only response: its status is in the headers.
pub fn too_large_is_resource_exhausted<B>(mut resp: http::Response<B>) -> http::Response<B> {
    let h = resp.headers_mut();
    let too_large = h.get("grpc-status").is_some_and(|v| v == "11")
        && h.get("grpc-message").is_some_and(|m| {
            percent_encoding::percent_decode(m.as_bytes())
                .decode_utf8_lossy()
                .starts_with("Error, decoded message length too large")
        });
    if too_large {
        h.insert("grpc-status", http::HeaderValue::from_static("8"));
    }
    resp
}

/// The gRPC API's services.
pub fn routes(state: Arc<Sidecar>) -> tonic::service::Routes {
    let max = state.limits.max_body_size;
    let dapr = DaprServer::new(DaprApi(state.clone()))
        .max_decoding_message_size(max.saturating_add(ENVELOPE))
        .max_encoding_message_size(max.saturating_add(ENVELOPE));
    let app_channel = state.callback.is_some().then(|| DaprAppChannelServer::new(AppChannelApi(state.clone())));
    let Some(up) = state.upstream_grpc.clone() else {
        let mut routes = tonic::service::Routes::new(dapr);
        if let Some(ac) = app_channel {
            routes = routes.add_service(ac);
        }
        return routes;
    };
    // Bridge mode: route the methods served here by name, and every other
    // one (other methods of the Dapr service included) on to daprd.
    let dapr_service = dialback_proto::runtime::dapr_server::SERVICE_NAME;
    let mut router = axum::Router::new().route_service(&format!("/{dapr_service}/InvokeService"), dapr).route_service(
        &format!("/{dapr_service}/GetMetadata"),
        tower::service_fn(move |req| super::merged::grpc_metadata(state.clone(), req)),
    );
    if let Some(ac) = app_channel {
        let name = dialback_proto::runtime::dapr_app_channel_server::SERVICE_NAME;
        router = router.route_service(&format!("/{name}/ConnectAppCallback"), ac);
    }
    tonic::service::Routes::from(router.fallback_service(up))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_as_the_wire_format_says() {
        let md = |v: &str| {
            let mut m = MetadataMap::new();
            m.insert("grpc-timeout", v.parse().unwrap());
            m
        };
        assert_eq!(grpc_timeout(&md("250m")), Some(Duration::from_millis(250)));
        assert_eq!(grpc_timeout(&md("3S")), Some(Duration::from_secs(3)));
        assert_eq!(grpc_timeout(&md("1H")), Some(Duration::from_secs(3600)));
        assert_eq!(grpc_timeout(&md("99999999n")), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "S", "5", "5x", "123456789S", "-1S", "1.5S"] {
            assert_eq!(grpc_timeout(&md(bad)), None, "{bad:?}");
        }
        assert_eq!(grpc_timeout(&MetadataMap::new()), None);
    }

    #[test]
    fn only_the_decoders_size_refusal_becomes_resource_exhausted() {
        let resp = |status: Status| too_large_is_resource_exhausted(status.into_http::<()>());
        let code = |r: http::Response<()>| Status::from_header_map(r.headers()).map(|s| s.code());
        let over =
            Status::out_of_range("Error, decoded message length too large: found 9 bytes, the limit is: 4 bytes");
        assert_eq!(code(resp(over)), Some(tonic::Code::ResourceExhausted));
        assert_eq!(code(resp(Status::out_of_range("index 9 out of range"))), Some(tonic::Code::OutOfRange));
        assert_eq!(code(resp(Status::not_found("no such app"))), Some(tonic::Code::NotFound));
    }
}
