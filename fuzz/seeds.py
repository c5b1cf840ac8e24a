#!/usr/bin/env python3
"""Writes the starting corpora of the fuzz targets (fuzz/corpus/<target>/seed-*), committed.

Tokens are signed with the committed test key tests/fixtures/rsa2048-a.pem (kid rsa-a) and the
fixed P-256 key of smart_fhir_edge::token::test_support, with claims valid at its NOW, so the
first runs reach signature verification and the claim rules. Needs the `cryptography` package.
"""
import base64, json, os, sys
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, utils

ROOT = os.path.dirname(os.path.abspath(__file__))
NOW = 1_700_000_000
ISS, AUD = "https://idp.example.org", "https://ehr.example.org/fhir"


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def uint(n):
    return b64(n.to_bytes((n.bit_length() + 7) // 8, "big"))


with open(os.path.join(ROOT, "..", "tests", "fixtures", "rsa2048-a.pem"), "rb") as f:
    RSA = serialization.load_pem_private_key(f.read(), None)
P256 = ec.derive_private_key(int.from_bytes(b"\x11" * 32, "big"), ec.SECP256R1())


def jws(header, claims, key="rsa"):
    h = b64(json.dumps(header, separators=(",", ":")).encode())
    p = b64(json.dumps(claims, separators=(",", ":")).encode())
    msg = f"{h}.{p}".encode()
    if key == "rsa":
        sig = RSA.sign(msg, padding.PKCS1v15(), hashes.SHA256())
    else:
        r, s = utils.decode_dss_signature(P256.sign(msg, ec.ECDSA(hashes.SHA256())))
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return f"{h}.{p}.{b64(sig)}"


def claims(**extra):
    c = {"iss": ISS, "aud": AUD, "sub": "user-1", "exp": NOW + 300, "iat": NOW - 10, "nbf": NOW - 10,
         "jti": "jti-1", "client_id": "app-1", "scope": "launch/patient patient/Observation.rs",
         "patient": "123", "fhirUser": "Practitioner/77"}
    c.update(extra)
    return c


def write(target, seeds):
    d = os.path.join(ROOT, "corpus", target)
    os.makedirs(d, exist_ok=True)
    for i, s in enumerate(seeds):
        with open(os.path.join(d, f"seed-{i:02}"), "wb") as f:
            f.write(s if isinstance(s, bytes) else s.encode())


rsa_h = {"alg": "RS256", "typ": "JWT", "kid": "rsa-a"}
write("token", [
    jws(rsa_h, claims()),
    jws({"alg": "ES256", "typ": "at+jwt", "kid": "ec-p256"}, claims(aud=[AUD, "x"], scope="user/*.cruds"), "ec"),
    jws({"alg": "RS256"}, claims(scp=["patient/*.rs"], exp=NOW - 100)),
    jws({"alg": "RS256", "kid": "rsa-a", "crit": ["b64"], "b64": False}, claims()),
    "Bearer " + jws(rsa_h, claims()),
    b64(b'{"alg":"none"}') + "." + b64(json.dumps(claims()).encode()) + ".",
])

pub = RSA.public_key().public_numbers()
ecpub = P256.public_key().public_numbers()
rsa_jwk = {"kty": "RSA", "kid": "rsa-a", "use": "sig", "alg": "RS256", "n": uint(pub.n), "e": uint(pub.e)}
ec_jwk = {"kty": "EC", "kid": "ec-p256", "crv": "P-256", "x": uint(ecpub.x), "y": uint(ecpub.y)}
write("jwks", [
    json.dumps({"keys": [rsa_jwk, ec_jwk]}),
    json.dumps({"keys": [dict(rsa_jwk, kid=None), {"kty": "oct", "k": "c2VjcmV0"}, {"kty": "OKP", "crv": "Ed25519", "x": b64(b"\x01" * 32)}]}),
    json.dumps({"keys": [dict(ec_jwk, use="enc"), dict(rsa_jwk, key_ops=["verify"], x5c=["MIIB"])]}),
    json.dumps({"keys": []}),
])

write("scope", [
    "launch/patient openid fhirUser patient/*.rs user/Observation.cruds",
    "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory\ncategory=laboratory&code=1234",
    "system/*.* user/Patient.read patient/Observation.write",
    "patient/Condition.rs?clinical-status=active&category=problem-list-item\nclinical-status=active&category=problem-list-item",
])

write("fhir_request", [
    "GET /fhir/Patient/123",
    "GET /fhir/Observation?patient=123&code=http://loinc.org|1234,5678&_include=Observation:subject&_count=10",
    "GET /fhir/Patient/123/Observation?category=laboratory",
    "GET /fhir/Observation/o1/_history/2",
    "POST /fhir/Observation/_search?patient=123",
    "GET /fhir/Patient/123/$everything?_since=2020-01-01",
    "DELETE /fhir/Observation?patient=123&code=x",
    "GET /fhir/Observation?subject:Patient=123&patient.name=smith&_has:Observation:patient:code=1",
    "GET /fhir/Patient/123/%2e%2e/456;x=1",
    "GET /fhir/metadata",
])

bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
    {"request": {"method": "GET", "url": "Observation?patient=123"}},
    {"fullUrl": "urn:uuid:1", "resource": {"resourceType": "Observation", "status": "final",
     "subject": {"reference": "Patient/123"}, "code": {"text": "x"}},
     "request": {"method": "POST", "url": "Observation"}},
    {"request": {"method": "DELETE", "url": "https://ehr.example/fhir/Observation/o1"}}]}
obs = {"resourceType": "Observation", "id": "o1", "status": "final", "category": [{"coding": [
    {"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}],
    "subject": {"reference": "Patient/123"}, "performer": [{"reference": "Patient/456"}]}
# Selector bytes: see REQUESTS in fuzz_targets/request_body.rs (index = byte % 8, grant = byte / 8 % 4).
write("request_body", [
    b"\x00patient=123&code=1234",
    b"\x01category=laboratory&_include=Observation:subject",
    b"\x02" + json.dumps(bundle).encode(),
    b"\x0a" + json.dumps(dict(bundle, type="transaction")).encode(),
    b"\x03" + json.dumps(obs).encode(),
    b"\x04" + json.dumps(obs).encode(),
    b"\x05" + json.dumps({"resourceType": "Patient", "id": "123", "link": [{"other": {"reference": "Patient/456"}}]}).encode(),
    b"\x06" + json.dumps([{"op": "replace", "path": "/subject/reference", "value": "Patient/456"}]).encode(),
    b"\x0f" + json.dumps(dict(obs, resourceType="Condition")).encode(),
])

entry = lambda r, mode="match": {"fullUrl": f"https://ehr.example/fhir/{r['resourceType']}/{r['id']}",
                                 "resource": r, "search": {"mode": mode}}
pat = {"resourceType": "Patient", "id": "123"}
searchset = {"resourceType": "Bundle", "type": "searchset", "total": 3,
             "link": [{"relation": "next", "url": "https://ehr.example/fhir/Observation?page=2"},
                      {"relation": "prev", "url": "http://internal/fhir/Observation?page=0"}],
             "entry": [entry(obs), entry(dict(obs, id="o2", subject={"reference": "Patient/456"})),
                       entry(pat, "include")]}
history = {"resourceType": "Bundle", "type": "history", "entry": [
    {"resource": obs, "request": {"method": "PUT", "url": "Observation/o1"}, "response": {"status": "200"}}]}
write("response_body", [
    b"\x00" + json.dumps(obs).encode(),
    b"\x01" + json.dumps(dict(obs, meta={"versionId": "2"})).encode(),
    b"\x02" + json.dumps(history).encode(),
    b"\x03" + json.dumps(searchset).encode(),
    b"\x04" + json.dumps(dict(searchset, entry=searchset["entry"] + [entry({"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/456"}})])).encode(),
    b"\x05" + json.dumps(pat).encode(),
    b"\x0e" + json.dumps(searchset).encode(),
    b"\x07" + json.dumps({"resourceType": "OperationOutcome", "issue": []}).encode(),
])
print("corpora written", file=sys.stderr)
