// Drives the official Ollama JavaScript client (npm `ollama`, unchanged) against a gateway.
//
//   node run.mjs <gateway-url> <scenario>
//
// Prints one JSON object with what the client returned; tests/clients/test_js_client.py asserts on
// it (and on what reached the stand-in upstreams). On an exception it prints
// {"thrown": {...}} and exits 1, so a failing scenario shows the client's own error.
import { Ollama } from 'ollama'

const [host, scenario] = process.argv.slice(2)
if (!host || !scenario) {
  console.error('usage: node run.mjs <gateway-url> <scenario>')
  process.exit(2)
}
const ollama = new Ollama({ host })

// A real 1x1 PNG (the same bytes as tests/clients/conftest.py PNG_B64).
const PNG_B64 =
  'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC'

const WEATHER_TOOL = {
  type: 'function',
  function: {
    name: 'get_weather',
    description: 'Get the current weather for a city',
    parameters: {
      type: 'object',
      properties: { city: { type: 'string', description: 'The city' } },
      required: ['city'],
    },
  },
}

const PERSON_SCHEMA = {
  type: 'object',
  properties: { name: { type: 'string' }, age: { type: 'integer' } },
  required: ['name', 'age'],
}

const user = (content) => [{ role: 'user', content }]

async function collect(iterator) {
  const parts = []
  for await (const part of iterator) parts.push(part)
  return parts
}

function strip(final) {
  // The final chunk minus the fields that vary run to run.
  const { created_at, total_duration, load_duration, prompt_eval_duration, eval_duration, ...rest } = final
  return rest
}

const scenarios = {
  async list() {
    const listed = await ollama.list()
    const shown = await ollama.show({ model: 'tiny' })
    return {
      models: listed.models.map((m) => m.model),
      show: { model_info: shown.model_info, capabilities: shown.capabilities },
    }
  },

  async chat() {
    const r = await ollama.chat({ model: 'tiny', messages: user('Hi') })
    return strip(r)
  },

  async generate() {
    const r = await ollama.generate({ model: 'tiny', prompt: 'Why is the sky blue?' })
    return strip(r)
  },

  async stream() {
    const chat = await collect(await ollama.chat({ model: 'tiny', messages: user('Hi'), stream: true }))
    const gen = await collect(await ollama.generate({ model: 'tiny', prompt: 'Hi', stream: true }))
    return {
      chat: chat.map((p) => p.message.content),
      chat_done: chat.map((p) => p.done),
      chat_final: strip(chat[chat.length - 1]),
      generate: gen.map((p) => p.response),
      generate_done: gen.map((p) => p.done),
    }
  },

  async tools() {
    const r = await ollama.chat({ model: 'tiny', messages: user('Weather in Paris?'), tools: [WEATHER_TOOL] })
    return { message: r.message, done_reason: r.done_reason }
  },

  async tools_stream() {
    const parts = await collect(
      await ollama.chat({ model: 'tiny', messages: user('Weather in Paris?'), tools: [WEATHER_TOOL], stream: true }),
    )
    return { tool_calls: parts.flatMap((p) => p.message.tool_calls ?? []), done: parts[parts.length - 1].done }
  },

  async structured() {
    const r = await ollama.chat({ model: 'tiny', messages: user('Who is Ann?'), format: PERSON_SCHEMA })
    return { content: r.message.content }
  },

  async think() {
    const whole = await ollama.chat({ model: 'tiny', messages: user('6*7?'), think: true })
    return { thinking: whole.message.thinking, content: whole.message.content }
  },

  async think_stream() {
    const parts = await collect(await ollama.chat({ model: 'tiny', messages: user('6*7?'), think: true, stream: true }))
    return {
      thinking: parts.map((p) => p.message.thinking ?? '').join(''),
      content: parts.map((p) => p.message.content).join(''),
    }
  },

  async embed() {
    const r = await ollama.embed({ model: 'nomic-embed-text', input: ['first', 'second'] })
    const legacy = await ollama.embeddings({ model: 'nomic-embed-text', prompt: 'first' })
    return { embeddings: r.embeddings, embedding: legacy.embedding }
  },

  async vision() {
    const image = Uint8Array.from(Buffer.from(PNG_B64, 'base64'))
    const r = await ollama.chat({
      model: 'llava:7b',
      messages: [{ role: 'user', content: 'What is this?', images: [image] }],
    })
    return { content: r.message.content, done: r.done }
  },

  async missing_model() {
    try {
      await ollama.chat({ model: 'nope', messages: user('Hi') })
      return { raised: false }
    } catch (e) {
      return { raised: true, name: e.name, error: e.error, status_code: e.status_code }
    }
  },
}

const run = scenarios[scenario]
if (!run) {
  console.error(`unknown scenario ${scenario}; known: ${Object.keys(scenarios).join(', ')}`)
  process.exit(2)
}
try {
  process.stdout.write(JSON.stringify(await run()) + '\n')
} catch (e) {
  process.stdout.write(JSON.stringify({ thrown: { name: e?.name, message: String(e?.message ?? e), status_code: e?.status_code } }) + '\n')
  process.exit(1)
}
