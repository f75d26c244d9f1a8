/**
 * Two audiences: a person at a terminal (short human lines, a live progress line) and the journal when a timer
 * runs the runner (one JSON object per line, so `journalctl -o cat | jq` works). Both go to stderr; stdout is
 * reserved for command output such as `list --json`.
 */
export type Level = "debug" | "info" | "warn" | "error";
export type Fields = Record<string, unknown>;

export interface LogSink {
  isTTY: boolean;
  write(text: string): void;
}

const stderrSink: LogSink = {
  get isTTY() {
    return Boolean(process.stderr.isTTY) && process.env.KVM_BACKUP_LOG !== "json";
  },
  write: (t) => void process.stderr.write(t),
};

export class Logger {
  constructor(
    private readonly fields: Fields = {},
    private readonly sink: LogSink = stderrSink,
  ) {}

  child(fields: Fields): Logger {
    return new Logger({ ...this.fields, ...fields }, this.sink);
  }

  get isTTY(): boolean {
    return this.sink.isTTY;
  }

  log(level: Level, event: string, msg: string, fields: Fields = {}): void {
    if (level === "debug" && !process.env.KVM_BACKUP_DEBUG) return;
    const all = { ...this.fields, ...fields };
    if (this.sink.isTTY) {
      const where = ["host", "vm", "disk", "target"].map((k) => all[k]).filter((v) => v !== undefined).join("/");
      const prefix = level === "info" || level === "debug" ? "" : `${level.toUpperCase()}: `;
      this.sink.write(`${new Date().toTimeString().slice(0, 8)} ${where ? where + " " : ""}${prefix}${msg}\n`);
    } else {
      this.sink.write(JSON.stringify({ ts: new Date().toISOString(), level, event, msg, ...all }) + "\n");
    }
  }

  debug(event: string, msg: string, fields?: Fields) { this.log("debug", event, msg, fields); }
  info(event: string, msg: string, fields?: Fields) { this.log("info", event, msg, fields); }
  warn(event: string, msg: string, fields?: Fields) { this.log("warn", event, msg, fields); }
  error(event: string, msg: string, fields?: Fields) { this.log("error", event, msg, fields); }

  /** A live line on a terminal; on a journal, one structured line every `intervalMs`. */
  progress(event: string, total: number | undefined, intervalMs = Number(process.env.KVM_BACKUP_PROGRESS_MS ?? 10_000)): Progress {
    return new Progress(this, event, total, this.sink.isTTY ? 250 : intervalMs);
  }

  /** Only for the terminal progress line. */
  writeRaw(text: string): void {
    this.sink.write(text);
  }
}

export function formatRate(bytesPerSecond: number): string {
  return `${(bytesPerSecond / 1e6).toFixed(1)} MB/s`;
}

export function formatEta(seconds: number | undefined): string {
  if (seconds === undefined || !Number.isFinite(seconds)) return "--:--";
  const s = Math.max(0, Math.round(seconds));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const ss = s % 60;
  return h ? `${h}:${String(m).padStart(2, "0")}:${String(ss).padStart(2, "0")}` : `${m}:${String(ss).padStart(2, "0")}`;
}

export class Progress {
  private readonly started = Date.now();
  private last = 0;
  private done = 0;
  constructor(
    private readonly logger: Logger,
    private readonly event: string,
    private readonly total: number | undefined,
    private readonly intervalMs: number,
  ) {}

  update(bytes: number): void {
    this.done = bytes;
    const now = Date.now();
    if (now - this.last < this.intervalMs) return;
    this.last = now;
    this.emit(false);
  }

  finish(): void {
    if (this.logger.isTTY) this.logger.writeRaw("\r\x1b[K");
  }

  snapshot() {
    const elapsed = (Date.now() - this.started) / 1000;
    const rate = elapsed > 0 ? this.done / elapsed : 0;
    const eta = this.total && rate > 0 ? (this.total - this.done) / rate : undefined;
    return { bytes: this.done, total: this.total, elapsed, rate, eta };
  }

  private emit(final: boolean): void {
    const s = this.snapshot();
    const pct = s.total ? ` ${((100 * s.bytes) / s.total).toFixed(1)}%` : "";
    const text = `${(s.bytes / 1e6).toFixed(0)}${s.total ? "/" + (s.total / 1e6).toFixed(0) : ""} MB${pct} ${formatRate(s.rate)} ETA ${formatEta(s.eta)}`;
    if (this.logger.isTTY) this.logger.writeRaw(`\r\x1b[K${text}${final ? "\n" : ""}`);
    else
      this.logger.info(this.event, text, {
        bytes: s.bytes,
        totalBytes: s.total,
        bytesPerSecond: Math.round(s.rate),
        etaSeconds: s.eta === undefined ? undefined : Math.round(s.eta),
      });
  }
}
