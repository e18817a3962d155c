//! The issuer's endpoints as route targets. Each is a path under the issuer URL with the
//! methods it takes; the gateway compiles them into its one router ahead of the config's
//! routes, so a method an endpoint does not take is the router's 405 with `Allow`.

/// One endpoint of the built-in issuer. Paths follow Auth0's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Authorize,
    Token,
    /// Pushed authorization requests (RFC 9126).
    Par,
    Userinfo,
    Revoke,
    Introspect,
    DeviceCode,
    Activate,
    Logout,
    Jwks,
    OpenidConfiguration,
    OAuthMetadata,
}

impl Endpoint {
    pub const ALL: [Endpoint; 12] = [
        Endpoint::Authorize,
        Endpoint::Token,
        Endpoint::Par,
        Endpoint::Userinfo,
        Endpoint::Revoke,
        Endpoint::Introspect,
        Endpoint::DeviceCode,
        Endpoint::Activate,
        Endpoint::Logout,
        Endpoint::Jwks,
        Endpoint::OpenidConfiguration,
        Endpoint::OAuthMetadata,
    ];

    /// The path under the issuer URL's path.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Authorize => "/authorize",
            Endpoint::Token => "/oauth/token",
            Endpoint::Par => "/oauth/par",
            Endpoint::Userinfo => "/userinfo",
            Endpoint::Revoke => "/oauth/revoke",
            Endpoint::Introspect => "/oauth/introspect",
            Endpoint::DeviceCode => "/oauth/device/code",
            Endpoint::Activate => "/activate",
            Endpoint::Logout => "/logout",
            Endpoint::Jwks => "/.well-known/jwks.json",
            Endpoint::OpenidConfiguration => "/.well-known/openid-configuration",
            Endpoint::OAuthMetadata => "/.well-known/oauth-authorization-server",
        }
    }

    /// Every path it is served at, for an issuer URL whose path is `base` (no trailing
    /// slash; empty at the root): `base` + [`Endpoint::path`], and for the metadata
    /// documents also the RFC 8414 §3.1 path-inserted form: for the issuer
    /// `https://h/tenant/`, `/.well-known/oauth-authorization-server/tenant` (and with the
    /// trailing slash), likewise for `openid-configuration` (RFC 8414 §5).
    ///
    /// ```
    /// use scopegate::issuer::Endpoint;
    /// assert_eq!(
    ///     Endpoint::OAuthMetadata.route_paths("/tenant"),
    ///     [
    ///         "/tenant/.well-known/oauth-authorization-server",
    ///         "/.well-known/oauth-authorization-server/tenant",
    ///         "/.well-known/oauth-authorization-server/tenant/",
    ///     ]
    /// );
    /// assert_eq!(Endpoint::OAuthMetadata.route_paths(""), ["/.well-known/oauth-authorization-server"]);
    /// assert_eq!(Endpoint::Token.route_paths("/tenant"), ["/tenant/oauth/token"]);
    /// ```
    pub fn route_paths(self, base: &str) -> Vec<String> {
        let mut paths = vec![format!("{base}{}", self.path())];
        if matches!(
            self,
            Endpoint::OAuthMetadata | Endpoint::OpenidConfiguration
        ) && !base.is_empty()
        {
            paths.push(format!("{}{base}", self.path()));
            paths.push(format!("{}{base}/", self.path()));
        }
        paths
    }

    /// The methods it takes. Pages with effects (a code, a sign-out) take GET and POST,
    /// never HEAD.
    pub fn methods(self) -> &'static [&'static str] {
        match self {
            Endpoint::Token
            | Endpoint::Par
            | Endpoint::Revoke
            | Endpoint::Introspect
            | Endpoint::DeviceCode => &["POST"],
            Endpoint::Userinfo => &["GET", "HEAD", "POST"],
            Endpoint::Authorize | Endpoint::Activate | Endpoint::Logout => &["GET", "POST"],
            Endpoint::Jwks | Endpoint::OpenidConfiguration | Endpoint::OAuthMetadata => {
                &["GET", "HEAD"]
            }
        }
    }
}
