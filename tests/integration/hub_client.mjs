#!/usr/bin/env node
// The real JavaScript Hub client (@huggingface/hub, pinned in package-lock.json), driven from the
// Python integration tests: it downloads the way a JS user's code would, with `hubUrl` pointed at
// zoogate (or, for the fake Hub's self-check, straight at the fake Hub).
//
//   node hub_client.mjs --hub-url URL --repo R [--revision REV] [--token T] [--no-xet] COMMAND ...
//     download FILE OUT   downloadFile(), the Blob streamed to OUT; prints the size and etag it saw
//     snapshot OUTDIR     snapshotDownload() with cacheDir=OUTDIR; prints the snapshot folder
//     info FILE           fileDownloadInfo() as JSON: what the client learnt from the resolve answer
//     list                listFiles({recursive: true}) as a JSON array (follows the tree pagination)
//
// R may carry a "datasets/" or "spaces/" prefix. --no-xet passes `xet: false`, for the fake Hub's
// self-check only: the fake Hub has no Xet storage service, so the client must not switch to Xet.
// Nothing here works around the library: a failure exits non-zero with the library's message on
// stderr, as a user would see it.
import { createWriteStream } from "node:fs";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { downloadFile, fileDownloadInfo, listFiles, snapshotDownload } from "@huggingface/hub";

const USAGE =
  "usage: node hub_client.mjs --hub-url URL --repo R [--revision REV] [--token T] [--no-xet] " +
  "(download FILE OUT | snapshot OUTDIR | info FILE | list)";

function parseArguments(argv) {
  const options = { revision: undefined, token: undefined, xet: true };
  const positional = [];
  for (let index = 0; index < argv.length; index++) {
    const argument = argv[index];
    const value = () => {
      if (index + 1 >= argv.length) throw new Error(`${argument} needs a value`);
      return argv[++index];
    };
    if (argument === "--hub-url") options.hubUrl = value();
    else if (argument === "--repo") options.repo = value();
    else if (argument === "--revision") options.revision = value();
    else if (argument === "--token") options.token = value();
    else if (argument === "--no-xet") options.xet = false;
    else if (argument.startsWith("--")) throw new Error(`unknown option ${argument}`);
    else positional.push(argument);
  }
  if (!options.hubUrl || !options.repo || positional.length === 0) throw new Error(USAGE);
  return { options, command: positional[0], operands: positional.slice(1) };
}

// "datasets/org/name" -> {type: "dataset", name: "org/name"}: the library's RepoDesignation.
function repoDesignation(repo) {
  for (const type of ["dataset", "space"]) {
    if (repo.startsWith(`${type}s/`)) return { type, name: repo.slice(type.length + 2) };
  }
  return { type: "model", name: repo };
}

async function main() {
  const { options, command, operands } = parseArguments(process.argv.slice(2));
  const common = {
    repo: repoDesignation(options.repo),
    hubUrl: options.hubUrl,
    revision: options.revision,
    ...(options.token ? { accessToken: options.token } : {}),
    ...(options.xet ? {} : { xet: false }),
  };
  if (command === "download" && operands.length === 2) {
    const [path, out] = operands;
    const blob = await downloadFile({ ...common, path });
    if (!blob) throw new Error(`${path}: not found (EntryNotFound)`);
    await pipeline(Readable.fromWeb(blob.stream()), createWriteStream(out));
    console.log(JSON.stringify({ path, out, size: blob.size }));
  } else if (command === "snapshot" && operands.length === 1) {
    const folder = await snapshotDownload({ ...common, cacheDir: operands[0] });
    console.log(folder);
  } else if (command === "info" && operands.length === 1) {
    const info = await fileDownloadInfo({ ...common, path: operands[0] });
    console.log(JSON.stringify(info ? { ...info, xet: info.xet ? { hash: info.xet.hash } : null } : null));
  } else if (command === "list" && operands.length === 0) {
    const entries = [];
    for await (const entry of listFiles({ ...common, recursive: true })) entries.push(entry);
    console.log(JSON.stringify(entries));
  } else {
    throw new Error(USAGE);
  }
}

main().catch((error) => {
  const status = error?.statusCode ? ` (HTTP ${error.statusCode})` : "";
  const cause = error?.cause ? `: ${error.cause.message ?? error.cause}` : "";
  console.error(`hub_client: ${error?.message ?? error}${status}${cause}`);
  process.exit(1);
});
