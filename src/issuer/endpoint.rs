//! The issuer's endpoints as route targets. Each is a path under the issuer URL with the
//! methods it takes; the gateway compiles them into its one router ahead of the config's
//! routes, so a method an endpoint does not take is the router's 405 with `Allow`.

/// One endpoint of the built-in issuer. Paths follow Auth0's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Authorize,
    Token,
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
    pub const ALL: [Endpoint; 11] = [
        Endpoint::Authorize,
        Endpoint::Token,
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

    /// The methods it takes. Pages with effects (a code, a sign-out) take GET and POST,
    /// never HEAD.
    pub fn methods(self) -> &'static [&'static str] {
        match self {
            Endpoint::Token | Endpoint::Revoke | Endpoint::Introspect | Endpoint::DeviceCode => {
                &["POST"]
            }
            Endpoint::Userinfo => &["GET", "HEAD", "POST"],
            Endpoint::Authorize | Endpoint::Activate | Endpoint::Logout => &["GET", "POST"],
            Endpoint::Jwks | Endpoint::OpenidConfiguration | Endpoint::OAuthMetadata => {
                &["GET", "HEAD"]
            }
        }
    }
}
