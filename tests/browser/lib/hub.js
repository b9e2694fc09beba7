// Starts a real Hearth hub (the binary cargo built) for the browser tests,
// exactly as the operator contract says: `hearth serve --config …`, port 0
// (or a given address, to restart on the same port), and the bound address
// read from the "hearth listening on http://ADDR" line on stdout.

import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '..', '..', '..');

export const STAFF_SECRET = 'browser-tests-secret-0123456789abcdef';

export function hubBinary() {
  const bin = process.env.HEARTH_BIN;
  if (!bin) {
    throw new Error('HEARTH_BIN is not set: run these through `cargo test --test browser`, or set HEARTH_BIN=target/debug/hearth');
  }
  return path.resolve(bin);
}

const CONFIG = process.env.HEARTH_TEST_CONFIG || path.join(repo, 'tests', 'config', 'test.toml');

function hubEnv(listen, dataDir) {
  return {
    ...process.env,
    HEARTH_LISTEN: listen,
    HEARTH_DATA_DIR: dataDir,
    HEARTH_STAFF_SECRET: STAFF_SECRET,
    HEARTH_REDIS_URL: '',
    HEARTH_WEBHOOK_URL: '',
    HEARTH_LOG: process.env.HEARTH_LOG || 'warn',
  };
}

/** A running hub: `url` (http://ADDR), `addr`, `stop()`, `restart()`. */
export class Hub {
  static async start() {
    const hub = new Hub(mkdtempSync(path.join(tmpdir(), 'hearth-browser-')));
    await hub.#spawn('127.0.0.1:0');
    return hub;
  }

  constructor(dataDir) {
    this.dataDir = dataDir;
    this.proc = null;
    this.addr = null;
    this.url = null;
    this.stderr = '';
  }

  #spawn(listen) {
    const proc = spawn(hubBinary(), ['serve', '--config', CONFIG], {
      env: hubEnv(listen, this.dataDir),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.proc = proc;
    // Never leave a hub behind, even when a test run is interrupted.
    const reap = () => proc.exitCode === null && proc.kill('SIGKILL');
    process.once('exit', reap);
    proc.once('exit', () => process.off('exit', reap));
    proc.stderr.on('data', (d) => {
      this.stderr = (this.stderr + d).slice(-8000);
    });
    return new Promise((resolve, reject) => {
      let out = '';
      const timer = setTimeout(() => reject(new Error(`hub did not start in 15 s:\n${this.stderr}`)), 15000);
      proc.stdout.on('data', (d) => {
        out += d;
        const m = /hearth listening on http:\/\/(\S+)/.exec(out);
        if (m && !this.addr) {
          clearTimeout(timer);
          this.addr = m[1];
          this.url = `http://${m[1]}`;
          resolve();
        }
      });
      proc.on('error', (e) => {
        clearTimeout(timer);
        reject(new Error(`cannot start ${hubBinary()}: ${e.message}`));
      });
      proc.on('exit', (code) => {
        if (!this.addr) {
          clearTimeout(timer);
          reject(new Error(`hub exited with ${code} before listening:\n${this.stderr}`));
        }
      });
    });
  }

  /** SIGTERM, wait for a clean exit (the contract says within 10 s). */
  async stop() {
    const proc = this.proc;
    if (!proc || proc.exitCode !== null) return;
    const exited = new Promise((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal })));
    proc.kill('SIGTERM');
    const timer = setTimeout(() => proc.kill('SIGKILL'), 12000);
    const result = await exited;
    clearTimeout(timer);
    return result;
  }

  /** Stops the hub and starts it again on the same address. */
  async restart() {
    const result = await this.stop();
    const addr = this.addr;
    this.addr = null;
    // The port was just freed; retry briefly in case it is still settling.
    for (let i = 0; ; i++) {
      try {
        await this.#spawn(addr);
        break;
      } catch (e) {
        if (i >= 20) throw e;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    return result;
  }

  async close() {
    await this.stop();
    rmSync(this.dataDir, { recursive: true, force: true });
  }

  /** A staff token minted by `hearth token`. */
  token(role, name) {
    return execFileSync(hubBinary(), ['token', '--role', role, '--name', name], {
      env: hubEnv('127.0.0.1:0', this.dataDir),
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
    }).trim();
  }
}
