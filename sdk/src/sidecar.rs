//! The app's client to its sidecar's APIs, configured like Dapr's SDKs.
//! From [`crate::Handle::sidecar`], its calls go as HTTP/3 on the channel
//! while that carries them, else to the gRPC or HTTP API port (see
//! [`crate::ApiChannel`]).

use std::time::Duration;

use dialback_proto::common::{InvokeRequest, InvokeResponse};
use dialback_proto::runtime::dapr_app_channel_client::DaprAppChannelClient;
use dialback_proto::runtime::dapr_client::DaprClient;
use dialback_proto::runtime::{ConnectAppCallbackRequest, ConnectAppCallbackResponse, InvokeServiceRequest};
use tonic::metadata::MetadataValue;

use crate::api::{ApiChannel, ApiRoute};
use crate::error::Error;

/// Where the sidecar's APIs are and how to authenticate to them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SidecarOptions {
    /// The gRPC endpoint, e.g. `http://127.0.0.1:50001`.
    pub grpc_endpoint: String,
    /// The HTTP endpoint, e.g. `http://127.0.0.1:3500`: where HTTP API
    /// requests through [`SidecarClient::api`] go while the channel does not
    /// carry them (spoken as HTTP/2 without TLS, which dialbackd's HTTP
    /// port serves beside HTTP/1.1).
    pub http_endpoint: String,
    /// Sent as `dapr-api-token` metadata when set.
    pub api_token: Option<String>,
    /// Bound on each call to the sidecar's API.
    pub timeout: Duration,
}

impl Default for SidecarOptions {
    fn default() -> Self {
        SidecarOptions {
            grpc_endpoint: "http://127.0.0.1:50001".into(),
            http_endpoint: "http://127.0.0.1:3500".into(),
            api_token: None,
            timeout: Duration::from_secs(5),
        }
    }
}

impl SidecarOptions {
    /// From Dapr's variables: `DAPR_GRPC_ENDPOINT`, else `DAPR_GRPC_PORT` on
    /// 127.0.0.1, else port 50001; the same for HTTP (`DAPR_HTTP_ENDPOINT`,
    /// `DAPR_HTTP_PORT`, 3500); `DAPR_API_TOKEN`.
    pub fn from_env() -> SidecarOptions {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// As [`SidecarOptions::from_env`], reading variables through `get` (testable).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> SidecarOptions {
        let endpoint = |full: &str, port: &str, default_port: &str| {
            let endpoint =
                get(full).filter(|s| !s.is_empty()).map(|e| if e.contains("://") { e } else { format!("http://{e}") });
            endpoint.unwrap_or_else(|| {
                let port = get(port).filter(|p| !p.is_empty()).unwrap_or_else(|| default_port.into());
                format!("http://127.0.0.1:{port}")
            })
        };
        SidecarOptions {
            grpc_endpoint: endpoint("DAPR_GRPC_ENDPOINT", "DAPR_GRPC_PORT", "50001"),
            http_endpoint: endpoint("DAPR_HTTP_ENDPOINT", "DAPR_HTTP_PORT", "3500"),
            api_token: get("DAPR_API_TOKEN").filter(|t| !t.is_empty()),
            ..SidecarOptions::default()
        }
    }

    /// The endpoint's host, for dialing the channel when the sidecar advertises no address.
    pub fn host(&self) -> Result<String, Error> {
        let uri: http::Uri = self.grpc_endpoint.parse().map_err(|_| Error::Endpoint(self.grpc_endpoint.clone()))?;
        uri.host()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string())
            .ok_or_else(|| Error::Endpoint(self.grpc_endpoint.clone()))
    }
}

/// A client to the sidecar's APIs. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SidecarClient {
    channel: tonic::transport::Channel,
    http: tonic::transport::Channel,
    options: SidecarOptions,
    route: ApiRoute,
}

impl SidecarClient {
    /// A client that connects lazily; fails only when an endpoint is not a valid URI.
    pub fn new(options: SidecarOptions) -> Result<SidecarClient, Error> {
        let lazy = |endpoint: &String| {
            Ok::<_, Error>(
                tonic::transport::Endpoint::from_shared(endpoint.clone())
                    .map_err(|_| Error::Endpoint(endpoint.clone()))?
                    .connect_timeout(options.timeout)
                    .timeout(options.timeout)
                    .tcp_nodelay(true)
                    .connect_lazy(),
            )
        };
        let (channel, http) = (lazy(&options.grpc_endpoint)?, lazy(&options.http_endpoint)?);
        Ok(SidecarClient { channel, http, options, route: ApiRoute::default() })
    }

    /// The options this client was made with.
    pub fn options(&self) -> &SidecarOptions {
        &self.options
    }

    /// Where this client's calls go: for any of Dapr's gRPC clients, e.g.
    /// `DaprClient::new(client.api())` for state, publish or invoke, and for
    /// HTTP API requests (`/v1.0/...`) as a tower service. Add the
    /// `dapr-api-token` metadata or header yourself where the sidecar wants
    /// it ([`SidecarClient::request`] does for gRPC).
    pub fn api(&self) -> ApiChannel {
        ApiChannel::new(self.channel.clone(), self.http.clone(), self.route.clone(), self.options.timeout)
    }

    /// Whether a call made now would go as HTTP/3 on the channel (the
    /// channel is QUIC and up, and the sidecar offered it).
    pub fn over_channel(&self) -> bool {
        self.api().over_channel()
    }

    /// The route the runner sets when a channel carries the API calls.
    pub(crate) fn route(&self) -> ApiRoute {
        self.route.clone()
    }

    /// `msg` as a request with this client's `dapr-api-token`, if any.
    pub fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        if let Some(t) = &self.options.api_token
            && let Ok(v) = MetadataValue::try_from(t.as_str())
        {
            req.metadata_mut().insert("dapr-api-token", v);
        }
        req
    }

    /// Asks where and how to dial the callback channel. Fails when the
    /// sidecar is unreachable, refuses the API token, or has no channel enabled.
    /// Always to the API endpoint, never on the channel: the SDK asks when
    /// the channel is down or in doubt (late Pings).
    pub async fn connect_app_callback(&self) -> Result<ConnectAppCallbackResponse, Error> {
        self.ask_channel(Vec::new()).await
    }

    /// ConnectAppCallback asking for a client certificate for `public_key`
    /// (a DER SubjectPublicKeyInfo; empty: none).
    pub(crate) async fn ask_channel(&self, public_key: Vec<u8>) -> Result<ConnectAppCallbackResponse, Error> {
        let mut c = DaprAppChannelClient::new(self.channel.clone());
        let request = ConnectAppCallbackRequest { client_public_key: public_key };
        Ok(c.connect_app_callback(self.request(request)).await?.into_inner())
    }

    /// Invokes `method` on app `app_id` through the sidecar. Fails with the
    /// sidecar's or the target app's status.
    pub async fn invoke(
        &self,
        app_id: &str,
        method: &str,
        data: Vec<u8>,
        content_type: &str,
    ) -> Result<InvokeResponse, Error> {
        let mut c = DaprClient::new(self.api());
        let req = InvokeServiceRequest {
            id: app_id.to_string(),
            message: Some(InvokeRequest {
                method: method.to_string(),
                data: Some(prost_types::Any { type_url: String::new(), value: data }),
                content_type: content_type.to_string(),
                http_extension: None,
            }),
        };
        Ok(c.invoke_service(self.request(req)).await?.into_inner())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn opts(vars: &[(&str, &str)]) -> SidecarOptions {
        let m: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        SidecarOptions::from_vars(|k| m.get(k).cloned())
    }

    #[test]
    fn dapr_environment() {
        assert_eq!(opts(&[]).grpc_endpoint, "http://127.0.0.1:50001");
        assert_eq!(opts(&[]).http_endpoint, "http://127.0.0.1:3500");
        assert_eq!(opts(&[("DAPR_GRPC_PORT", "6001")]).grpc_endpoint, "http://127.0.0.1:6001");
        assert_eq!(opts(&[("DAPR_HTTP_PORT", "6002")]).http_endpoint, "http://127.0.0.1:6002");
        assert_eq!(opts(&[("DAPR_HTTP_ENDPOINT", "sidecar.local:7001")]).http_endpoint, "http://sidecar.local:7001");
        let o =
            opts(&[("DAPR_GRPC_ENDPOINT", "sidecar.local:7000"), ("DAPR_GRPC_PORT", "6001"), ("DAPR_API_TOKEN", "t")]);
        assert_eq!(o.grpc_endpoint, "http://sidecar.local:7000");
        assert_eq!(o.api_token.as_deref(), Some("t"));
        assert_eq!(o.host().unwrap(), "sidecar.local");
        assert_eq!(opts(&[("DAPR_GRPC_ENDPOINT", "https://[::1]:443")]).host().unwrap(), "::1");
    }
}
