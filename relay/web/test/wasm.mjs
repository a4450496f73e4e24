// Loads the module the tests run against: target/wasm/am.wasm, built by scripts/build-wasm.sh
// (scripts/test.sh builds it before these tests).
import { readFileSync } from "node:fs";
import { load } from "../am.js";

const path = new URL("../../../target/wasm/am.wasm", import.meta.url);

export async function loaded() {
  let bytes;
  try {
    bytes = readFileSync(path);
  } catch (e) {
    throw new Error(`${path.pathname} is missing (${e.code}): run scripts/build-wasm.sh first`);
  }
  await load(bytes);
}
