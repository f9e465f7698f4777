// jose side of the interoperability check: for each case directory (see interop.py),
// sign tokens from our PEM (importPKCS8) and private JWK (importJWK), then verify every
// token (ours and PyJWT's) against our JWKS with the algorithm pinned, and check that
// forged and tampered tokens and the wrong algorithm are rejected.
import { readFileSync, readdirSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import {
  SignJWT,
  createLocalJWKSet,
  importJWK,
  importPKCS8,
  importX509,
  jwtVerify,
} from "jose";

const root = process.argv[2];
const read = (dir, name) => readFileSync(join(dir, name), "utf8");

async function rejected(what, promise) {
  try {
    await promise;
  } catch {
    return;
  }
  throw new Error(`${what} was accepted`);
}

async function sign(key, alg, kid) {
  const now = Math.floor(Date.now() / 1000);
  return new SignJWT({ iss: "keyrotor-interop", sub: "jose" })
    .setProtectedHeader({ alg, kid })
    .setIssuedAt(now)
    .setExpirationTime(now + 600)
    .sign(key);
}

const cases = readdirSync(root)
  .map((name) => join(root, name))
  .filter((dir) => statSync(dir).isDirectory())
  .sort();
if (cases.length === 0) throw new Error(`no cases in ${root}`);

for (const dir of cases) {
  const alg = read(dir, "alg");
  const kid = read(dir, "kid");
  const jwks = JSON.parse(read(dir, "jwks.json"));
  if (jwks.keys[0].kid !== kid) throw new Error("Active key is not first in the JWKS");
  const pemKey = await importPKCS8(read(dir, "private.pem"), alg);
  writeFileSync(join(dir, "jose-pem.jwt"), await sign(pemKey, alg, kid));
  const jwkKey = await importJWK(JSON.parse(read(dir, "private.jwk")), alg);
  writeFileSync(join(dir, "jose-jwk.jwt"), await sign(jwkKey, alg, kid));

  const keyset = createLocalJWKSet(jwks);
  const cert = await importX509(read(dir, "tls.crt"), alg);
  const publicJwk = await importJWK(jwks.keys.find((k) => k.kid === kid), alg);
  const tokens = readdirSync(dir)
    .filter((name) => name.endsWith(".jwt") && name !== "forged.jwt")
    .sort();
  if (tokens.length < 4) throw new Error(`${dir}: expected tokens from both libraries`);
  const other = alg === "ES256" ? "ES384" : "ES256";
  for (const name of tokens) {
    const token = read(dir, name);
    const { payload } = await jwtVerify(token, keyset, { algorithms: [alg] });
    if (payload.iss !== "keyrotor-interop") throw new Error(`${name}: wrong claims`);
    await jwtVerify(token, publicJwk, { algorithms: [alg] });
    await jwtVerify(token, cert, { algorithms: [alg] });
    await rejected(`${name} under ${other}`, jwtVerify(token, keyset, { algorithms: [other] }));
    const [head, , signature] = token.split(".");
    const body = Buffer.from('{"sub":"mallory"}').toString("base64url");
    await rejected(`tampered ${name}`, jwtVerify(`${head}.${body}.${signature}`, keyset, { algorithms: [alg] }));
  }
  await rejected("token signed by another key",
    jwtVerify(read(dir, "forged.jwt"), keyset, { algorithms: [alg] }));
  console.log(`jose: ${dir.split("/").pop()}: ${tokens.length} tokens verified, forgeries rejected`);
}
