//! The Dapr-style gRPC API: `Dapr/InvokeService` and
//! `DaprAppChannel/ConnectAppCallback`.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use dialback_proto::common::{InvokeRequest, InvokeResponse};
use dialback_proto::runtime::dapr_app_channel_server::{DaprAppChannel, DaprAppChannelServer};
use dialback_proto::runtime::dapr_server::{Dapr, DaprServer};
use dialback_proto::runtime::{ConnectAppCallbackRequest, ConnectAppCallbackResponse, InvokeServiceRequest};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use crate::invoke::{MAX_MESSAGE, invoke};
use crate::state::Sidecar;

/// `dapr.proto.runtime.v1.Dapr`.
#[derive(Clone)]
pub struct DaprApi(pub Arc<Sidecar>);

/// `dapr.proto.runtime.v1.DaprAppChannel`.
#[derive(Clone)]
pub struct AppChannelApi(pub Arc<Sidecar>);

/// Metadata that belongs to this hop and is not passed to the app.
fn forwardable(md: &MetadataMap) -> MetadataMap {
    let mut headers = md.clone().into_headers();
    for k in
        ["dapr-api-token", "content-type", "te", "user-agent", "grpc-accept-encoding", "grpc-encoding", "grpc-timeout"]
    {
        headers.remove(k);
    }
    MetadataMap::from_headers(headers)
}

/// Checks the `dapr-api-token` metadata when a token is configured.
fn authorize(s: &Sidecar, md: &MetadataMap) -> Result<(), Status> {
    let Some(want) = &s.api_token_sha else { return Ok(()) };
    match md.get("dapr-api-token").and_then(|v| v.to_str().ok()) {
        Some(t) if crate::auth::sha256(t) == *want => Ok(()),
        _ => Err(Status::unauthenticated("missing or invalid dapr-api-token metadata")),
    }
}

#[tonic::async_trait]
impl Dapr for DaprApi {
    async fn invoke_service(&self, request: Request<InvokeServiceRequest>) -> Result<Response<InvokeResponse>, Status> {
        authorize(&self.0, request.metadata())?;
        let md = forwardable(request.metadata());
        let req = request.into_inner();
        let message: InvokeRequest =
            req.message.ok_or_else(|| Status::invalid_argument("InvokeServiceRequest.message is required"))?;
        if message.method.is_empty() {
            return Err(Status::invalid_argument("InvokeRequest.method is required"));
        }
        let s = &self.0;
        invoke(&s.app, &s.app_id, &req.id, message, md, s.wait_timeout)
            .await
            .map(Response::new)
            .map_err(|e| e.to_status())
    }
}

#[tonic::async_trait]
impl DaprAppChannel for AppChannelApi {
    async fn connect_app_callback(
        &self,
        request: Request<ConnectAppCallbackRequest>,
    ) -> Result<Response<ConnectAppCallbackResponse>, Status> {
        let s = &self.0;
        authorize(s, request.metadata())?;
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
        let expires = SystemTime::now() + s.token_ttl;
        let (address, port) = match &cb.advertise {
            Some(adv) => (adv.clone(), adv.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).unwrap_or(0)),
            None => (String::new(), i32::from(cb.listen.port())),
        };
        Ok(Response::new(ConnectAppCallbackResponse {
            port,
            transports: cb.transports.iter().map(|t| t.to_proto() as i32).collect(),
            token,
            cert_sha256: cb.fingerprint.0.to_vec(),
            token_expires_unix_ms: expires.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0),
            address,
            app_id: s.app_id.clone(),
            server_name: cb.server_name.clone(),
        }))
    }
}

/// The gRPC API's services.
pub fn routes(state: Arc<Sidecar>) -> tonic::service::Routes {
    let dapr = DaprServer::new(DaprApi(state.clone()))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let mut routes = tonic::service::Routes::new(dapr);
    if state.callback.is_some() {
        routes = routes.add_service(DaprAppChannelServer::new(AppChannelApi(state)));
    }
    routes
}
