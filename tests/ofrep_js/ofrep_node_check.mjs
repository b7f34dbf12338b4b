// Run by tests/test_ofrep_clients.py: OpenFeature's Node server SDK with its OFREP
// provider against a flagwire server. Prints what each evaluation gave, as JSON.
// Usage: node ofrep_node_check.mjs <server url> <SDK key>
import { OpenFeature } from "@openfeature/server-sdk";
import { OFREPProvider } from "@openfeature/ofrep-provider";

const [baseUrl, key] = process.argv.slice(2);
await OpenFeature.setProviderAndWait(
  new OFREPProvider({ baseUrl, headers: [["Authorization", `Bearer ${key}`]] }),
);
const client = OpenFeature.getClient();
const bob = { targetingKey: "bob" };
const pick = (d) => ({ value: d.value, reason: d.reason, variant: d.variant, errorCode: d.errorCode });
const out = {
  bool: await client.getBooleanDetails("new-checkout", false, bob),
  string: await client.getStringDetails("banner", "none", bob),
  number: await client.getNumberDetails("max-items", 0, bob),
  object: await client.getObjectDetails("theme", {}, bob),
  vip: await client.getBooleanDetails("vip", false, { targetingKey: "alice" }),
  missing: await client.getBooleanDetails("nope", true, bob),
};
const picked = Object.fromEntries(Object.entries(out).map(([k, d]) => [k, pick(d)]));
picked.bool = { value: picked.bool.value, reason: picked.bool.reason, variant: picked.bool.variant };
console.log(JSON.stringify(picked));
await OpenFeature.close();
