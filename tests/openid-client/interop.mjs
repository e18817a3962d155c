// openid-client (a certified OpenID relying party library) against the built-in issuer
// and the gateway, for tests/issuer_oidc.rs: private_key_jwt client authentication,
// DPoP-bound client credentials used on a proxied route, and a pushed authorization
// request. Prints one JSON object with what happened; exits 0 unless it crashed.
//
// Environment: OPENID_CLIENT (path of openid-client's entry module), ISSUER, CLIENT_ID,
// CLIENT_KEY (the client's ES256 private key, PKCS#8 DER in base64), CLIENT_KID,
// AUDIENCE, SCOPE, RESOURCE (a proxied URL), REDIRECT_URI.

import { createPrivateKey, webcrypto } from "node:crypto";
import { pathToFileURL } from "node:url";

const env = process.env;
const client = await import(pathToFileURL(env.OPENID_CLIENT).href);

const jwk = createPrivateKey({
  key: Buffer.from(env.CLIENT_KEY, "base64"),
  format: "der",
  type: "pkcs8",
}).export({ format: "jwk" });
const signingKey = await webcrypto.subtle.importKey(
  "jwk",
  jwk,
  { name: "ECDSA", namedCurve: "P-256" },
  false,
  ["sign"],
);

const config = await client.discovery(
  new URL(env.ISSUER),
  env.CLIENT_ID,
  { token_endpoint_auth_method: "private_key_jwt" },
  client.PrivateKeyJwt({ key: signingKey, kid: env.CLIENT_KID }),
  { execute: [client.allowInsecureRequests] },
);

const out = {};
const dpopKeys = await client.randomDPoPKeyPair("ES256");
const dpop = client.getDPoPHandle(config, dpopKeys);
const tokens = await client.clientCredentialsGrant(
  config,
  { audience: env.AUDIENCE, scope: env.SCOPE },
  { DPoP: dpop },
);
out.token_type = tokens.token_type;
out.scope = tokens.scope;

const resource = new URL(env.RESOURCE);
const bound = await client.fetchProtectedResource(
  config,
  tokens.access_token,
  resource,
  "GET",
  undefined,
  undefined,
  { DPoP: dpop },
);
out.with_proof = bound.status;
// The same token as a plain bearer token: the proof is missing.
const unbound = await fetch(resource, {
  headers: { authorization: `Bearer ${tokens.access_token}` },
});
out.without_proof = unbound.status;
out.without_proof_challenge = unbound.headers.get("www-authenticate");

const verifier = client.randomPKCECodeVerifier();
const pushed = await client.buildAuthorizationUrlWithPAR(config, {
  redirect_uri: env.REDIRECT_URI,
  scope: "openid",
  code_challenge: await client.calculatePKCECodeChallenge(verifier),
  code_challenge_method: "S256",
  state: client.randomState(),
});
out.pushed_params = [...pushed.searchParams.keys()].sort();
const page = await fetch(pushed, { redirect: "manual" });
out.authorize_status = page.status;
out.authorize_page_asks_sign_in = (await page.text()).includes("password");

console.log(JSON.stringify(out));
