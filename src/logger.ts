// Structured JSON logs on stderr (stdout is for command output such as --json results).
import { pino, type Logger } from 'pino'

export function createLogger(level = 'info'): Logger {
  return pino({ level, base: { service: 'segmenter' } }, pino.destination(2))
}
