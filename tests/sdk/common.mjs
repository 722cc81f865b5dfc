// What the JavaScript SDK programs share: the SDK from DIALBACK_SDK_JS
// (scripts/sdks.sh js), a client per protocol, and running each client
// named on the command line into one JSON line on stdout (exit 1 with the
// error on stderr when one fails).
import { createRequire } from "node:module";
import path from "node:path";

// Writes `msg` on stderr as program `name`, and exits 1.
export const failer = (name) => (msg) => {
  process.stderr.write(`${name}: ${msg}\n`);
  process.exit(1);
};

// The @dapr/dapr module, or `fail` when DIALBACK_SDK_JS is not set.
export function loadDapr(fail) {
  if (!process.env.DIALBACK_SDK_JS) fail("DIALBACK_SDK_JS must name the SDK's directory (scripts/sdks.sh js)");
  const require = createRequire(path.join(process.env.DIALBACK_SDK_JS, "package.json"));
  return require("@dapr/dapr");
}

// A DaprClient for "grpc" or "http", quiet but for errors.
export function clientFor(dapr, protocol) {
  const { DaprClient, CommunicationProtocolEnum, LogLevel } = dapr;
  const communicationProtocol = { grpc: CommunicationProtocolEnum.GRPC, http: CommunicationProtocolEnum.HTTP }[protocol];
  if (communicationProtocol === undefined) throw new Error(`unknown protocol ${protocol}`);
  return new DaprClient({ communicationProtocol, logger: { level: LogLevel.Error } });
}

// Runs `run(protocol)` for each of the comma-separated `protocols` and
// prints {protocol: result, ...} as one JSON line; `fail`s on the first error.
export async function runEach(protocols, run, fail) {
  try {
    const result = {};
    for (const p of protocols.split(",")) {
      try {
        result[p] = await run(p);
      } catch (e) {
        throw new Error(`${p} client: ${e?.stack ?? e}`);
      }
    }
    process.stdout.write(`${JSON.stringify(result)}\n`);
    process.exit(0);
  } catch (e) {
    fail(String(e));
  }
}
