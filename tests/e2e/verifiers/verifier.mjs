// JWT verifiers backed by jose, driven by the end-to-end harness.
//
// Reads one JSON request per line on stdin and writes one JSON response per line on
// stdout, echoing the request's "n" and adding "at" (when it was answered, Unix
// seconds). Requests ("op"):
//
//   create       {verifier, cacheSeconds, cooldownSeconds}
//                a verifier with its own jose remote JWK Set (createRemoteJWKSet, which
//                builds a createLocalJWKSet from each fetched document) with that
//                cacheMaxAge and cooldownDuration
//   publish      {verifier, jwks: text-or-null}
//                the document the verifier's endpoint now serves (its mounted ConfigMap);
//                jose fetches it only when its cache says so
//   verify       {verifier, token, alg} -> {ok: true, kid} or {ok: false, error}
//   thumbprints  {jwks: text} -> {ok: true, keys: [{kid, thumbprint, imported, error}]}
//

import { createInterface } from "node:readline";
import {
  calculateJwkThumbprint,
  createRemoteJWKSet,
  customFetch,
  decodeProtectedHeader,
  importJWK,
  jwtVerify,
} from "jose";

const AUDIENCE = "keyrotor-e2e";
const ISSUER = "keyrotor-e2e-issuer";

const verifiers = new Map();

// jose's JWKS cache and cooldown read Date.now(). A verify request carries the harness's
// clock ("now", Unix seconds) so that a backlog in this process cannot stretch the
// cache's age beyond what the harness models; claim checks (exp) use new Date(), the
// real clock.
const realNow = Date.now.bind(Date);
let requestNow = null;
Date.now = () => requestNow ?? realNow();

function createVerifier({ verifier, cacheSeconds = 0, cooldownSeconds = 0 }) {
  const state = { served: null };
  const fetchServed = async () => {
    if (state.served === null) {
      return new Response("no JWKS document served yet", { status: 503 });
    }
    return new Response(state.served, {
      status: 200,
      headers: { "content-type": "application/json" },
    });
  };
  state.keySet = createRemoteJWKSet(new URL("https://jwks.invalid/jwks.json"), {
    cacheMaxAge: Math.round(cacheSeconds * 1000),
    cooldownDuration: Math.round(cooldownSeconds * 1000),
    [customFetch]: fetchServed,
  });
  verifiers.set(verifier, state);
  return { ok: true };
}

async function verify({ verifier, token, alg, now }) {
  const state = verifiers.get(verifier);
  requestNow = typeof now === "number" ? Math.round(now * 1000) : null;
  try {
    const { protectedHeader } = await jwtVerify(token, state.keySet, {
      algorithms: [alg],
      audience: AUDIENCE,
      issuer: ISSUER,
      requiredClaims: ["exp", "iat"],
    });
    return { ok: true, kid: protectedHeader.kid ?? null };
  } catch (err) {
    let kid = null;
    try {
      kid = decodeProtectedHeader(token).kid ?? null;
    } catch {
      // not even a JWS header
    }
    return { ok: false, error: `${err.code ?? err.name}: ${err.message}`, kid };
  } finally {
    requestNow = null;
  }
}

async function thumbprints({ jwks }) {
  const doc = JSON.parse(jwks);
  const keys = [];
  for (const jwk of doc.keys ?? []) {
    const entry = { kid: jwk.kid ?? null, thumbprint: null, imported: false, error: null };
    try {
      entry.thumbprint = await calculateJwkThumbprint(jwk, "sha256");
      await importJWK(jwk, jwk.alg);
      entry.imported = true;
    } catch (err) {
      entry.error = `${err.code ?? err.name}: ${err.message}`;
    }
    keys.push(entry);
  }
  return { ok: true, keys };
}

const ops = {
  create: async (req) => createVerifier(req),
  publish: async (req) => {
    verifiers.get(req.verifier).served = req.jwks ?? null;
    return { ok: true };
  },
  verify,
  thumbprints,
};

// One request at a time, in order: a verification sees exactly the documents published
// before it.
let previous = Promise.resolve();
const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
lines.on("line", (line) => {
  if (!line.trim()) return;
  previous = previous.then(async () => {
    let response;
    let n = null;
    try {
      const req = JSON.parse(line);
      n = req.n ?? null;
      const op = ops[req.op];
      if (!op) throw new Error(`unknown op ${req.op}`);
      response = await op(req);
    } catch (err) {
      response = { ok: false, error: `bad request: ${err.message}` };
    }
    response.n = n;
    response.at = Date.now() / 1000;
    process.stdout.write(JSON.stringify(response) + "\n");
  });
});
lines.on("close", () => {
  previous.then(() => process.exit(0));
});
