// An official Node.js client's bulk helper (client.helpers.bulk) indexing documents through
// splade-es serve --enrich. Prints JSON for tests/integration/test_serve_enrich_node.py: the
// helper's stats and every document it dropped (onDrop).
//
//   node bulk.mjs opensearch|elasticsearch URL INDEX DOCUMENTS.json
//
// DOCUMENTS.json is an array of documents with an `id`, used as the `_id`. Small bulks
// (flushBytes) with the helper's default concurrency, so several are in flight at once.
import { readFile } from 'node:fs/promises'
import { Client as OpenSearch } from '@opensearch-project/opensearch'
import { Client as Elasticsearch } from '@elastic/elasticsearch'

const [kind, url, index, path] = process.argv.slice(2)
const Client = { opensearch: OpenSearch, elasticsearch: Elasticsearch }[kind]
if (!Client) throw new Error(`unknown client ${kind}: opensearch or elasticsearch`)
const documents = JSON.parse(await readFile(path, 'utf8'))
const client = new Client({ node: url, maxRetries: 0 })
const dropped = []
let bulks = 0 // _bulk requests answered, counted from the client's own events
const events = client.diagnostic ?? client // @elastic/elasticsearch 8 | opensearch
events.on('response', (err, result) => {
  if (!err && result?.meta?.request?.params?.path?.endsWith('/_bulk')) bulks += 1
})
try {
  const stats = await client.helpers.bulk({
    datasource: documents,
    onDocument: doc => ({ index: { _index: index, _id: doc.id } }),
    onDrop: drop => dropped.push({
      id: drop.operation.index._id,
      status: drop.status,
      error: drop.error,
      document: drop.document
    }),
    flushBytes: 4096,
    wait: 100 // a 429 from the proxy's full queue is retried soon
  })
  console.log(JSON.stringify({
    total: stats.total,
    successful: stats.successful,
    failed: stats.failed,
    retry: stats.retry,
    aborted: stats.aborted,
    bulks,
    dropped
  }))
} finally {
  await client.close()
}
