// Rebuilds the contracts' JSON artifacts (workers/contracts/out/*.json) with
// the pinned solc-js from package.json: `npm run contracts` from the
// repository root. The artifacts are committed; the Rust bindings
// (workers/src/evm/contracts.rs, alloy's `sol!`) read them at compile time.
import { readFileSync, writeFileSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import solc from "solc";

const here = dirname(fileURLToPath(import.meta.url));
const sources = ["MockUSDC.sol", "TollgateSettlement.sol"];
const settings = {
  evmVersion: "cancun",
  optimizer: { enabled: true, runs: 10000 },
  outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] } },
};
const input = {
  language: "Solidity",
  sources: Object.fromEntries(sources.map((f) => [f, { content: readFileSync(join(here, f), "utf8") }])),
  settings,
};
const output = JSON.parse(solc.compile(JSON.stringify(input)));
const errors = (output.errors ?? []).filter((e) => e.severity === "error");
for (const e of output.errors ?? []) console.error(e.formattedMessage);
if (errors.length > 0) process.exit(1);

mkdirSync(join(here, "out"), { recursive: true });
for (const [file, contracts] of Object.entries(output.contracts)) {
  for (const [name, c] of Object.entries(contracts)) {
    if (c.evm.bytecode.object === "") continue; // interfaces
    const artifact = {
      contractName: name,
      sourceName: file,
      compiler: { solc: solc.version(), evmVersion: settings.evmVersion, optimizer: settings.optimizer },
      abi: c.abi,
      bytecode: "0x" + c.evm.bytecode.object,
      deployedBytecode: "0x" + c.evm.deployedBytecode.object,
    };
    writeFileSync(join(here, "out", `${name}.json`), JSON.stringify(artifact, null, 2) + "\n");
    console.log(`out/${name}.json: ${c.evm.deployedBytecode.object.length / 2} bytes deployed`);
  }
}
