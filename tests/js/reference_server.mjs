// The reference y-websocket server (@y/websocket-server 0.1.1) on an ephemeral port.
//
// Its own bin (src/server.js) prints the PORT it was given, not the one it bound, so port 0
// cannot be read back. This launcher binds HOST:0 and prints one JSON line: {"port": N}.
// Room name = URL path without the leading slash, exactly as in the upstream server.
import http from 'node:http'
import { WebSocketServer } from 'ws'
import { setupWSConnection } from '@y/websocket-server/utils'

const host = process.env.HOST || '127.0.0.1'
const port = Number.parseInt(process.env.PORT || '0', 10)

const wss = new WebSocketServer({ noServer: true })
wss.on('connection', setupWSConnection)

const server = http.createServer((_request, response) => {
  response.writeHead(200, { 'Content-Type': 'text/plain' })
  response.end('okay')
})
server.on('upgrade', (request, socket, head) => {
  wss.handleUpgrade(request, socket, head, ws => wss.emit('connection', ws, request))
})
server.listen(port, host, () => {
  process.stdout.write(JSON.stringify({ port: server.address().port }) + '\n')
})

// No graceful close: server.close() would wait for upgraded sockets it does not track.
process.on('SIGTERM', () => process.exit(0))
process.on('SIGINT', () => process.exit(0))
// Die with the parent: it holds our stdin open for as long as it wants us.
process.stdin.on('end', () => process.exit(0))
process.stdin.resume()
