// The official Node.js clients pointed at splade-es serve: one search with a `splade` clause
// and one with a malformed clause each. Prints JSON for tests/integration/test_serve_node.py.
import { Client as OpenSearch } from '@opensearch-project/opensearch'
import { Client as Elasticsearch } from '@elastic/elasticsearch'

const [opensearchUrl, elasticsearchUrl, index, text, size] = process.argv.slice(2)
const body = { query: { splade: { splade: text } }, size: Number(size) }
const malformed = { query: { splade: { splade: { query: text, top_k: 'many' } } } }

async function run (search) {
  const hits = (await search(body)).hits.hits.map(h => [h._id, h._score])
  let error = null
  try {
    await search(malformed)
  } catch (err) {
    error = { name: err.name, statusCode: err.meta?.statusCode ?? err.statusCode, type: err.meta?.body?.error?.type }
  }
  return { hits, error }
}

const os = new OpenSearch({ node: opensearchUrl, maxRetries: 0 })
const es = new Elasticsearch({ node: elasticsearchUrl, maxRetries: 0 })
const out = {
  opensearch: await run(async b => (await os.search({ index, body: b })).body),
  elasticsearch: await run(async b => await es.search({ index, ...b }))
}
await os.close()
await es.close()
console.log(JSON.stringify(out))
