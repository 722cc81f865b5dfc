//! A convenience `AppCallback`: register invoke handlers by method name.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use dialback_proto::common::{InvokeRequest, InvokeResponse};
use dialback_proto::runtime::app_callback_server::{AppCallback, AppCallbackServer};
use dialback_proto::runtime::{
    BindingEventRequest, BindingEventResponse, ListInputBindingsResponse, ListTopicSubscriptionsResponse,
    TopicEventRequest, TopicEventResponse,
};
use futures_util::future::BoxFuture;
use tonic::{Request, Response, Status};

type Handler = Arc<dyn Fn(Request<InvokeRequest>) -> BoxFuture<'static, Result<InvokeResponse, Status>> + Send + Sync>;

/// OnInvoke handlers by method name; other AppCallback methods answer
/// "no subscriptions, no bindings".
#[derive(Clone, Default)]
pub struct InvokeHandlers {
    handlers: HashMap<String, Handler>,
    fallback: Option<Handler>,
}

impl std::fmt::Debug for InvokeHandlers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InvokeHandlers").field("methods", &self.handlers.keys().collect::<Vec<_>>()).finish()
    }
}

impl InvokeHandlers {
    /// No handlers yet.
    pub fn new() -> InvokeHandlers {
        InvokeHandlers::default()
    }

    /// Handles `method` with `f`; a later handler for the same name wins.
    pub fn on<F, Fut>(mut self, method: &str, f: F) -> InvokeHandlers
    where
        F: Fn(Request<InvokeRequest>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<InvokeResponse, Status>> + Send + 'static,
    {
        self.handlers.insert(method.to_string(), Arc::new(move |r| Box::pin(f(r))));
        self
    }

    /// Handles every method that has no handler of its own.
    pub fn fallback<F, Fut>(mut self, f: F) -> InvokeHandlers
    where
        F: Fn(Request<InvokeRequest>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<InvokeResponse, Status>> + Send + 'static,
    {
        self.fallback = Some(Arc::new(move |r| Box::pin(f(r))));
        self
    }

    /// Whether no handler is registered.
    pub fn is_empty(&self) -> bool {
        self.handlers.is_empty() && self.fallback.is_none()
    }

    /// As a tonic service, ready for [`crate::CallbackServerBuilder::add_service`].
    pub fn into_service(self) -> AppCallbackServer<InvokeHandlers> {
        AppCallbackServer::new(self)
    }
}

#[tonic::async_trait]
impl AppCallback for InvokeHandlers {
    async fn on_invoke(&self, request: Request<InvokeRequest>) -> Result<Response<InvokeResponse>, Status> {
        let method = request.get_ref().method.clone();
        match self.handlers.get(&method).or(self.fallback.as_ref()) {
            Some(h) => h(request).await.map(Response::new),
            None => Err(Status::unimplemented(format!("no handler for method {method:?}"))),
        }
    }

    async fn list_topic_subscriptions(
        &self,
        _: Request<()>,
    ) -> Result<Response<ListTopicSubscriptionsResponse>, Status> {
        Ok(Response::new(ListTopicSubscriptionsResponse::default()))
    }

    async fn on_topic_event(&self, _: Request<TopicEventRequest>) -> Result<Response<TopicEventResponse>, Status> {
        Err(Status::unimplemented("this app subscribes to no topics"))
    }

    async fn list_input_bindings(&self, _: Request<()>) -> Result<Response<ListInputBindingsResponse>, Status> {
        Ok(Response::new(ListInputBindingsResponse::default()))
    }

    async fn on_binding_event(
        &self,
        _: Request<BindingEventRequest>,
    ) -> Result<Response<BindingEventResponse>, Status> {
        Err(Status::unimplemented("this app handles no input bindings"))
    }
}
