/** The client: `connect(url)` returns a RemoteBroker with the embedded Broker's API (docs/protocol.md). */
export { connect, RemoteBroker } from './remote-broker.js';
export type {
  ConnectOptions,
  ReconnectOptions,
  RemoteBrokerEvents,
  RemoteConsumeOptions,
  RemotePublishOptions,
  RemoteBatchMessage,
  ReplayOptions,
  ReplayResult,
} from './remote-broker.js';
export { RemoteConsumer } from './remote-consumer.js';
export type { RemoteHandler } from './remote-consumer.js';
export { RemoteMessage } from './remote-message.js';
export { RemoteSubscription } from './remote-subscription.js';
export { parseBrokerUrl } from './url.js';
export type { BrokerAddress } from './url.js';
