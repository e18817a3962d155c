// node-oidc-provider for scenario 8: client_credentials only, JWT access tokens via
// resource indicators, signed with ALG (RS256 or ES256) from the bench's private JWKS.
// Usage: node oidc-server.mjs PORT ALG JWKS_PRIVATE_FILE AUDIENCE SCOPE CLIENT_ID SECRET
// The provider's own modules come from NODE_PATH-free resolution: run it from (or with
// a symlink into) the directory that holds node_modules/oidc-provider.
import { readFileSync } from 'node:fs';
import Provider from 'oidc-provider';

const [port, alg, jwksFile, audience, scope, clientId, clientSecret] = process.argv.slice(2);
const jwks = JSON.parse(readFileSync(jwksFile, 'utf8'));

const provider = new Provider(`http://127.0.0.1:${port}`, {
  jwks,
  clients: [{
    client_id: clientId,
    client_secret: clientSecret,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  scopes: ['openid', scope],
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => audience,
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resourceIndicator) => {
        if (resourceIndicator !== audience) throw new Error('unknown resource');
        return {
          scope,
          audience,
          accessTokenTTL: 3600,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg } },
        };
      },
    },
  },
});
provider.proxy = false;
// No request logging: the benchmark measures issuance, not console output.
provider.on('server_error', (ctx, err) => console.error('server_error', err));
provider.listen(Number(port), '127.0.0.1', () => {
  console.log(`oidc-provider listening on 127.0.0.1:${port} alg=${alg}`);
});
