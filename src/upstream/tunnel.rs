//! Upgraded exchanges (WebSocket): each on a connection of its own, never pooled, since
//! after a `101 Switching Protocols` the connection belongs to the relayed protocol.

use http::{Request, Response, Uri};
use hyper::body::Incoming;
use tower_service::Service;

use super::{PoolKey, UpstreamBody, UpstreamError, Upstreams, error_chain, is_timeout};

impl Upstreams {
    /// Sends an upgrade request (absolute URI) on a new HTTP/1.1 connection; waits at
    /// most the response timeout for the head. On a `101`, `hyper::upgrade::on` the
    /// response gives the connection.
    pub async fn send_upgrade(
        &self,
        mut request: Request<Incoming>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let uri = std::mem::take(request.uri_mut()).into_parts();
        let authority = uri
            .authority
            .ok_or_else(|| UpstreamError::Exchange("the upstream URI has no authority".into()))?;
        let key: PoolKey = (uri.scheme == Some(http::uri::Scheme::HTTPS), authority);
        let mut origin = http::uri::Parts::default();
        origin.path_and_query = uri.path_and_query;
        *request.uri_mut() =
            Uri::from_parts(origin).map_err(|err| UpstreamError::Exchange(err.to_string()))?;
        let work = async {
            let scheme = if key.0 { "https" } else { "http" };
            let address: Uri = format!("{scheme}://{}/", key.1)
                .parse()
                .map_err(|_| UpstreamError::Connect("invalid upstream address".into()))?;
            let io = self.connector.clone().call(address).await.map_err(|err| {
                if is_timeout(err.as_ref()) {
                    UpstreamError::Timeout
                } else {
                    UpstreamError::Connect(error_chain(err.as_ref()))
                }
            })?;
            let (mut sender, connection) = self
                .handshake
                .handshake(io)
                .await
                .map_err(|err| UpstreamError::Connect(error_chain(&err)))?;
            tokio::spawn(async move {
                if let Err(err) = connection.with_upgrades().await {
                    tracing::debug!(error = %err, "upgraded upstream connection ended with an error");
                }
            });
            sender
                .send_request(request.map(UpstreamBody::Client))
                .await
                .map_err(|err| UpstreamError::Exchange(error_chain(&err)))
        };
        tokio::time::timeout(self.response_timeout, work)
            .await
            .map_err(|_| UpstreamError::Timeout)?
    }
}
