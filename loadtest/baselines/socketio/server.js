// Minimal Socket.IO 4 peer for Hearth's loadtest (`loadtest run --target socketio`).
//
// The same join/send/broadcast semantics as `loadtest bare`, nothing else:
//   emit("join",  {room}, ack)       -> ack({type:"joined", room, seq})   seq = the room's latest
//   emit("send",  {room, text}, ack) -> io.to(room).emit("message", {type:"message", room, seq, ts, from, text})
//                                       then ack({type:"ok", seq})         seq = the room's next number
//   emit("leave", {room}, ack)       -> ack({type:"left", room})
// Websocket transport only, no per-message deflate, no HTTP long-polling.
//
// Environment:
//   LISTEN     address to listen on (default 127.0.0.1:3000; port 0 picks one). Loopback only.
//   REDIS_URL  set: @socket.io/redis-adapter fans out across nodes, and room seqs come from
//              Redis INCR (shared by every node). Note: INCR and the adapter's PUBLISH are two
//              steps, so two nodes sending into one room may deliver out of seq order; the load
//              generator reports that as reordering.
// Prints "socketio listening on http://ADDR" once it accepts connections.
"use strict";

const http = require("node:http");
const { Server } = require("socket.io");

const [host, portText] = (process.env.LISTEN || "127.0.0.1:3000").split(/:(?=[^:]*$)/);
if (!["127.0.0.1", "localhost", "::1", "[::1]"].includes(host) && !host.startsWith("127.")) {
  console.error(`socketio: refusing to listen on ${host}: loopback only`);
  process.exit(2);
}

const httpServer = http.createServer((req, res) => {
  res.writeHead(404);
  res.end();
});
const io = new Server(httpServer, {
  transports: ["websocket"],
  serveClient: false,
  perMessageDeflate: false,
  maxHttpBufferSize: 16384,
});

// Room sequence numbers: in memory, or in Redis with the adapter.
const seqs = new Map();
let nextSeq = async (room) => {
  const s = (seqs.get(room) || 0) + 1;
  seqs.set(room, s);
  return s;
};
let currentSeq = async (room) => seqs.get(room) || 0;

async function useRedis(url) {
  const { createClient } = require("redis");
  const { createAdapter } = require("@socket.io/redis-adapter");
  const pub = createClient({ url });
  const sub = pub.duplicate();
  const cmd = pub.duplicate();
  for (const c of [pub, sub, cmd]) c.on("error", (e) => console.error("redis:", e.message));
  await Promise.all([pub.connect(), sub.connect(), cmd.connect()]);
  io.adapter(createAdapter(pub, sub));
  nextSeq = (room) => cmd.incr(`sio:seq:${room}`);
  currentSeq = async (room) => Number((await cmd.get(`sio:seq:${room}`)) || 0);
}

io.on("connection", (socket) => {
  const reply = (ack, v) => typeof ack === "function" && ack(v);
  socket.on("join", async (p, ack) => {
    const room = p && String(p.room);
    if (!room) return reply(ack, { type: "error", code: "bad_request" });
    socket.join(room);
    reply(ack, { type: "joined", room, seq: await currentSeq(room) });
  });
  socket.on("leave", (p, ack) => {
    const room = p && String(p.room);
    socket.leave(room);
    reply(ack, { type: "left", room });
  });
  socket.on("send", async (p, ack) => {
    const room = p && String(p.room);
    if (!room || !socket.rooms.has(room)) return reply(ack, { type: "error", code: "not_joined" });
    const seq = await nextSeq(room);
    io.to(room).emit("message", {
      type: "message",
      room,
      seq,
      ts: Date.now(),
      from: { id: socket.id },
      text: String(p.text),
    });
    reply(ack, { type: "ok", seq });
  });
});

(async () => {
  if (process.env.REDIS_URL) await useRedis(process.env.REDIS_URL);
  httpServer.listen(Number(portText || 3000), host.replace(/^\[|\]$/g, ""), () => {
    const a = httpServer.address();
    const shown = a.family === "IPv6" ? `[${a.address}]` : a.address;
    console.log(`socketio listening on http://${shown}:${a.port}`);
  });
})().catch((e) => {
  console.error("socketio:", e);
  process.exit(1);
});

for (const sig of ["SIGTERM", "SIGINT"]) {
  process.on(sig, () => {
    io.close();
    process.exit(0);
  });
}
