// A statement's UTF-8 bytes, encoded once. A request body of 280 kB (an HTTP batch of 10,000) was
// encoded three times on its way: for its size (the batch limits), for its record in the journal
// (a bind parameter), and for the socket; ~0.4 ms of the sidecar's 4 ms a batch (bench/http,
// 2026-12-02). The statement is one string object from its render to its send, so a lookup
// compares by identity first (===) and costs nothing; a miss encodes again, which is only slower.
// What one lane holds at once: a group of two requests in flight, the next group recorded, the
// batches after it rendered (REQUEST_GROUP_MAX_BATCHES in deliver/pipeline.ts).
const KEPT = 6
const recent: Array<{ text: string; bytes: Buffer }> = []

export function utf8(text: string): Buffer {
  for (const entry of recent) if (entry.text === text) return entry.bytes
  const bytes = Buffer.from(text, 'utf8')
  recent.unshift({ text, bytes })
  if (recent.length > KEPT) recent.pop()
  return bytes
}
