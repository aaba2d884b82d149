// The Node.js reference tus server (@tus/server with @tus/file-store), as the upload benchmark's
// yardstick. Prints the port it listens on.
import http from 'node:http';
import { Server } from '@tus/server';
import { FileStore } from '@tus/file-store';

const directory = process.argv[2];
const tus = new Server({ path: '/files', datastore: new FileStore({ directory }) });
const server = http.createServer((req, res) => tus.handle(req, res));
server.listen(0, '127.0.0.1', () => console.log(server.address().port));
