// Follow one Stasis CI job's events with the `nats` package for Node.js and
// check each one against the JSON Schema the gateway serves.
//
// Usage: node follow_job.mjs NATS_URL JOB_ID SCHEMA_FILE
// Prints one JSON line per event: {"type": ..., "valid": true|false, "errors": [...]}
// and exits after `run.finished`, or with code 2 after 60 s without it.
import { readFileSync } from "node:fs";
import { connect, consumerOpts, JSONCodec } from "nats";
import Ajv2020 from "ajv/dist/2020.js";

const [url, jobId, schemaFile] = process.argv.slice(2);
const schema = JSON.parse(readFileSync(schemaFile, "utf8"));
const ajv = new Ajv2020({ strict: false });
ajv.addSchema(schema, "stasis");
const validateEvent = ajv.getSchema("stasis#/$defs/AnyEvent");

const nc = await connect({ servers: url });
const js = nc.jetstream();
const options = consumerOpts();
options.orderedConsumer();
options.deliverAll();
const subscription = await js.subscribe(`stasis.jobs.${jobId}`, options);
const codec = JSONCodec();
const timer = setTimeout(() => {
  console.error("no run.finished within 60 s");
  process.exit(2);
}, 60_000);

for await (const message of subscription) {
  const event = codec.decode(message.data);
  const valid = validateEvent(event);
  console.log(JSON.stringify({ type: event.type, valid, errors: validateEvent.errors ?? [] }));
  if (event.type === "run.finished") {
    break;
  }
}
clearTimeout(timer);
await nc.close();
