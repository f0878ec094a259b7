// entra_idp.mjs PORT TENANT CONTROL_JSON — an Entra ID (Azure AD) token endpoint stand-in for
// workload-identity tests, on 127.0.0.1: oauth2-mock-server serving
// POST /<TENANT>/oauth2/v2.0/token (client_credentials with a client_assertion), issuing tokens
// Azurite accepts (iss https://sts.windows.net/<tenant>/, aud https://storage.azure.com).
// CONTROL_JSON is read on every request, so a test can change behaviour mid-run:
//   {"accept": ["assertion", ...]}  assertions allowed (others: 401 AADSTS700024)
//   "aud": audience to put in tokens   "ttl": token lifetime in seconds
//   "expired": true -> tokens already expired
// Each accepted request is appended to CONTROL_JSON + ".log" as "<assertion>" lines.
import { readFileSync, appendFileSync } from 'node:fs';

const [port, tenant, control] = process.argv.slice(2);
const { OAuth2Server } = await import(process.env.OAUTH2_MOCK_SERVER_DIR + '/dist/index.mjs');
const settings = () => JSON.parse(readFileSync(control, 'utf8'));

const server = new OAuth2Server(undefined, undefined, {
  endpoints: { token: `/${tenant}/oauth2/v2.0/token` },
});
await server.issuer.keys.generate('RS256');
server.service.on('beforeTokenSigning', (token, req) => {
  const s = settings();
  const now = Math.floor(Date.now() / 1000);
  token.payload.iss = `https://sts.windows.net/${tenant}/`;
  token.payload.aud = s.aud ?? 'https://storage.azure.com';
  token.payload.sub = req.body?.client_id;
  token.payload.appid = req.body?.client_id;
  if (s.expired) {
    token.payload.iat = now - 7200;
    token.payload.nbf = now - 7200;
    token.payload.exp = now - 3600;
  } else {
    token.payload.exp = now + (s.ttl ?? 3600);
  }
});
server.service.on('beforeResponse', (response, req) => {
  const s = settings();
  const assertion = req.body?.client_assertion;
  const ok = req.body?.client_assertion_type === 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer'
    && (s.accept ?? []).includes(assertion)
    && req.body?.scope === 'https://storage.azure.com/.default';
  if (!ok) {
    response.statusCode = 401;
    response.body = {
      error: 'invalid_client',
      error_description: 'AADSTS700024: Client assertion is not within its valid time range.',
      error_codes: [700024],
    };
    return;
  }
  response.body.expires_in = s.ttl ?? 3600;
  appendFileSync(control + '.log', assertion + '\n');
});
await server.start(Number(port), '127.0.0.1');
console.log('entra idp up');
