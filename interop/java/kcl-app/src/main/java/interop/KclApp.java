package interop;

import java.net.URI;
import java.nio.charset.StandardCharsets;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.TimeUnit;

import software.amazon.awssdk.auth.credentials.AwsBasicCredentials;
import software.amazon.awssdk.auth.credentials.StaticCredentialsProvider;
import software.amazon.awssdk.http.Protocol;
import software.amazon.awssdk.http.nio.netty.NettyNioAsyncHttpClient;
import software.amazon.awssdk.regions.Region;
import software.amazon.awssdk.services.cloudwatch.CloudWatchAsyncClient;
import software.amazon.awssdk.services.dynamodb.DynamoDbAsyncClient;
import software.amazon.awssdk.services.kinesis.KinesisAsyncClient;
import software.amazon.kinesis.common.ConfigsBuilder;
import software.amazon.kinesis.common.InitialPositionInStream;
import software.amazon.kinesis.common.InitialPositionInStreamExtended;
import software.amazon.kinesis.coordinator.CoordinatorConfig;
import software.amazon.kinesis.coordinator.Scheduler;
import software.amazon.kinesis.leases.LeaseManagementConfig;
import software.amazon.kinesis.lifecycle.events.InitializationInput;
import software.amazon.kinesis.lifecycle.events.LeaseLostInput;
import software.amazon.kinesis.lifecycle.events.ProcessRecordsInput;
import software.amazon.kinesis.lifecycle.events.ShardEndedInput;
import software.amazon.kinesis.lifecycle.events.ShutdownRequestedInput;
import software.amazon.kinesis.metrics.MetricsLevel;
import software.amazon.kinesis.metrics.NullMetricsFactory;
import software.amazon.kinesis.processor.RecordProcessorCheckpointer;
import software.amazon.kinesis.processor.ShardRecordProcessor;
import software.amazon.kinesis.retrieval.KinesisClientRecord;
import software.amazon.kinesis.retrieval.kpl.ExtendedSequenceNumber;
import software.amazon.kinesis.retrieval.polling.PollingConfig;

/**
 * A Java KCL 3.x application as users write one: a {@link ShardRecordProcessor} that logs every
 * user record it is given and checkpoints after each batch at its last record, run by the KCL's
 * {@link Scheduler} with its default (3.x) lease assignment, polling retrieval, and CloudWatch
 * metrics off. Standard output gets one JSON object per line, its {@code message} one of
 * {@code record received} (shard, partition key, sequence and sub-sequence number, whether it
 * came from an aggregate, the data as UTF-8), {@code checkpoint}, {@code initialized} (the
 * checkpoint a shard starts from), {@code lease lost}, {@code shard ended},
 * {@code shutdown requested}, {@code halted}, {@code stopped}; the KCL's own log goes to
 * standard error.
 *
 * <p>Environment: {@code STREAM_NAME}, {@code APPLICATION_NAME} (the lease table),
 * {@code WORKER_ID}, {@code KINESIS_ENDPOINT}, {@code DYNAMODB_ENDPOINT} (URLs),
 * {@code AWS_REGION}, {@code AWS_ACCESS_KEY_ID}, {@code AWS_SECRET_ACCESS_KEY};
 * optional {@code FAILOVER_MS} (10000, the KCL default), {@code MAX_RECORDS} (GetRecords limit,
 * 10000), {@code IDLE_MS} (idle time between reads, 1500), {@code CLIENT_VERSION_CONFIG}
 * ({@code CLIENT_VERSION_CONFIG_3X}, the KCL default, or {@code
 * CLIENT_VERSION_CONFIG_COMPATIBLE_WITH_2X}) and {@code STOP_AT}.
 *
 * <p>{@code STOP_AT=shardId:sequence:subsequence,...} simulates a crash at a known position:
 * when a shard's processor meets that user record it checkpoints exactly there (as
 * {@code checkpointer.checkpoint(record)} does), logs the rest of that batch without
 * checkpointing (processed, not checkpointed: what a crash repeats), then ignores the shard;
 * when every listed shard got there, the process halts without any shutdown (exit 0 with
 * {@code halted}), leaving its leases owned, like {@code kill -9}.
 *
 * <p>SIGTERM: the KCL's graceful shutdown ({@code shutdownRequested}, where the processor
 * checkpoints), then exit 0 with {@code stopped}.
 */
public final class KclApp {
    private static final Map<String, ExtendedSequenceNumber> stopAt = new HashMap<>();
    private static final Set<String> stopped = ConcurrentHashMap.newKeySet();

    public static void main(String[] args) throws Exception {
        String stream = Env.required("STREAM_NAME");
        String application = Env.required("APPLICATION_NAME");
        String workerId = Env.required("WORKER_ID");
        Region region = Region.of(Env.required("AWS_REGION"));
        StaticCredentialsProvider credentials = StaticCredentialsProvider.create(AwsBasicCredentials.create(
                Env.required("AWS_ACCESS_KEY_ID"), Env.required("AWS_SECRET_ACCESS_KEY")));
        long failoverMs = Env.number("FAILOVER_MS", 10_000);
        int maxRecords = (int) Env.number("MAX_RECORDS", PollingConfig.DEFAULT_MAX_RECORDS);
        long idleMs = Env.number("IDLE_MS", 1500);
        for (String entry : Env.optional("STOP_AT", "").split(",")) {
            if (entry.isBlank()) {
                continue;
            }
            String[] parts = entry.trim().split(":");
            if (parts.length != 3) {
                System.err.println("configuration error: STOP_AT entry is not shardId:sequence:subsequence: " + entry);
                System.exit(2);
            }
            stopAt.put(parts[0], new ExtendedSequenceNumber(parts[1], Long.parseLong(parts[2])));
        }

        // The emulators speak HTTP/1.1 on their plain port; the KCL's own client helper would ask
        // for HTTP/2, which only enhanced fan-out needs (this application polls).
        KinesisAsyncClient kinesis = KinesisAsyncClient.builder()
                .region(region)
                .credentialsProvider(credentials)
                .endpointOverride(URI.create(Env.required("KINESIS_ENDPOINT")))
                .httpClientBuilder(NettyNioAsyncHttpClient.builder().protocol(Protocol.HTTP1_1))
                .build();
        DynamoDbAsyncClient dynamo = DynamoDbAsyncClient.builder()
                .region(region)
                .credentialsProvider(credentials)
                .endpointOverride(URI.create(Env.required("DYNAMODB_ENDPOINT")))
                .build();
        // Required by ConfigsBuilder, never called with NullMetricsFactory; a closed local port so
        // that a call would fail here instead of reaching AWS.
        CloudWatchAsyncClient cloudWatch = CloudWatchAsyncClient.builder()
                .region(region)
                .credentialsProvider(credentials)
                .endpointOverride(URI.create(Env.optional("CLOUDWATCH_ENDPOINT", "http://127.0.0.1:9")))
                .build();

        ConfigsBuilder configs = new ConfigsBuilder(
                stream, application, kinesis, dynamo, cloudWatch, workerId, Processor::new);
        LeaseManagementConfig leases = configs.leaseManagementConfig()
                .failoverTimeMillis(failoverMs)
                .shardSyncIntervalMillis(Math.max(1000, failoverMs))
                .initialPositionInStream(
                        InitialPositionInStreamExtended.newInitialPosition(InitialPositionInStream.TRIM_HORIZON));
        // Worker metrics are what the 3.x leader assigns leases by: report them often enough
        // for a test's time scale (the default is every 30 s).
        leases.workerUtilizationAwareAssignmentConfig()
                .workerMetricsReporterFreqInMillis(Math.max(1000, failoverMs / 2));
        // The leader lock's timings (KCL defaults: 120 s and 30 s), shortened by tests that
        // move the leadership.
        leases.dynamoDbLockBasedLeaderLeaseDurationInMillis(Env.number("LEADER_LEASE_MS", 120_000));
        leases.dynamoDbLockBasedLeaderHeartbeatPeriodInMillis(Env.number("LEADER_HEARTBEAT_MS", 30_000));
        // CLIENT_VERSION_CONFIG_COMPATIBLE_WITH_2X: an application upgrading from 2.x (the KCL 2.x
        // algorithms until the fleet is ready); the KCL's default is CLIENT_VERSION_CONFIG_3X.
        CoordinatorConfig coordinator = configs.coordinatorConfig().parentShardPollIntervalMillis(1000);
        coordinator.clientVersionConfig(CoordinatorConfig.ClientVersionConfig.valueOf(
                Env.optional("CLIENT_VERSION_CONFIG", "CLIENT_VERSION_CONFIG_3X")));
        Scheduler scheduler = new Scheduler(
                configs.checkpointConfig(),
                coordinator,
                leases,
                configs.lifecycleConfig(),
                configs.metricsConfig().metricsLevel(MetricsLevel.NONE).metricsFactory(new NullMetricsFactory()),
                configs.processorConfig(),
                configs.retrievalConfig()
                        .initialPositionInStreamExtended(
                                InitialPositionInStreamExtended.newInitialPosition(InitialPositionInStream.TRIM_HORIZON))
                        .retrievalSpecificConfig(new PollingConfig(stream, kinesis)
                                .maxRecords(maxRecords)
                                .idleTimeBetweenReadsInMillis(idleMs)));

        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                boolean done = scheduler.startGracefulShutdown().get(20, TimeUnit.SECONDS);
                Json.event("stopped").put("graceful", done).print();
            } catch (Exception e) {
                Json.event("stopped").put("graceful", false).put("error", e.toString()).print();
            }
            System.out.flush();
        }));
        Json.event("started").put("worker_id", workerId).put("stream", stream).put("table", application).print();
        Thread runner = new Thread(scheduler, "kcl-scheduler");
        runner.start();
        runner.join();
    }

    /** Called when a STOP_AT shard reached its position: halt once all of them did. */
    private static void shardStopped(String shardId) {
        stopped.add(shardId);
        if (stopped.containsAll(stopAt.keySet())) {
            Json.event("halted").print();
            System.out.flush();
            Runtime.getRuntime().halt(0);
        }
    }

    private static final class Processor implements ShardRecordProcessor {
        private String shardId;
        private boolean ignoring;

        @Override
        public void initialize(InitializationInput input) {
            shardId = input.shardId();
            ExtendedSequenceNumber at = input.extendedSequenceNumber();
            Json.event("initialized")
                    .put("shard_id", shardId)
                    .put("checkpoint", at.sequenceNumber())
                    .put("sub_sequence_number", at.subSequenceNumber())
                    .print();
        }

        @Override
        public void processRecords(ProcessRecordsInput input) {
            if (ignoring) {
                return;
            }
            List<KinesisClientRecord> records = input.records();
            ExtendedSequenceNumber stop = stopAt.get(shardId);
            KinesisClientRecord last = null;
            boolean reachedStop = false;
            for (KinesisClientRecord record : records) {
                Json.event("record received")
                        .put("shard_id", shardId)
                        .put("partition_key", record.partitionKey())
                        .put("sequence_number", record.sequenceNumber())
                        .put("sub_sequence_number", record.subSequenceNumber())
                        .put("aggregated", record.aggregated())
                        .put("data", StandardCharsets.UTF_8.decode(record.data().duplicate()).toString())
                        .print();
                last = record;
                if (!reachedStop && stop != null
                        && stop.sequenceNumber().equals(record.sequenceNumber())
                        && stop.subSequenceNumber() == record.subSequenceNumber()) {
                    checkpoint(input.checkpointer(), record.sequenceNumber(), record.subSequenceNumber());
                    reachedStop = true;
                }
            }
            if (reachedStop) {
                ignoring = true;
                shardStopped(shardId);
            } else if (last != null) {
                checkpoint(input.checkpointer(), last.sequenceNumber(), last.subSequenceNumber());
            }
        }

        @Override
        public void leaseLost(LeaseLostInput input) {
            Json.event("lease lost").put("shard_id", shardId).print();
        }

        @Override
        public void shardEnded(ShardEndedInput input) {
            try {
                input.checkpointer().checkpoint();
                Json.event("shard ended").put("shard_id", shardId).print();
            } catch (Exception e) {
                Json.event("checkpoint failed").put("shard_id", shardId).put("error", e.toString()).print();
            }
        }

        @Override
        public void shutdownRequested(ShutdownRequestedInput input) {
            Json.event("shutdown requested").put("shard_id", shardId).print();
            if (ignoring) {
                return;
            }
            try {
                // At the last record handed over (already checkpointed after its batch, so this
                // is a no-op unless a batch was in progress).
                input.checkpointer().checkpoint();
            } catch (Exception e) {
                Json.event("checkpoint failed").put("shard_id", shardId).put("error", e.toString()).print();
            }
        }

        private void checkpoint(RecordProcessorCheckpointer checkpointer, String sequenceNumber, long subSequenceNumber) {
            try {
                checkpointer.checkpoint(sequenceNumber, subSequenceNumber);
                Json.event("checkpoint")
                        .put("shard_id", shardId)
                        .put("sequence_number", sequenceNumber)
                        .put("sub_sequence_number", subSequenceNumber)
                        .print();
            } catch (Exception e) {
                Json.event("checkpoint failed").put("shard_id", shardId).put("error", e.toString()).print();
            }
        }
    }
}
