#!/usr/bin/env bash
# Build the cx360 Flex Template (image + template spec) and launch the streaming job on
# Dataflow. Needs gcloud (authenticated), Docker or Cloud Build, and a repository in Artifact
# Registry. Nothing here runs on the offline build machines.
#
#   deploy/dataflow/build_and_run.sh --project my-proj --region europe-west3 \
#       --bucket my-bucket --bootstrap-servers kafka-1:9092 \
#       --warehouse bigquery://my-proj/cx360 [--kafka-source python|java] [--build-only]
#       [--tag v1] [--job-name cx360-stream] [--start-from committed] [--update]
#       [-- name=value ...]     # further template parameters (see metadata.json)
set -euo pipefail

usage() { sed -n '2,11p' "$0"; exit 2; }

PROJECT="" REGION="europe-west3" BUCKET="" BOOTSTRAP="" WAREHOUSE=""
KAFKA_SOURCE="python" TAG="$(date -u +%Y%m%d-%H%M%S)" JOB_NAME="cx360-stream"
START_FROM="committed" BUILD_ONLY=0 UPDATE=0 REPO_NAME="cx360" EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --project) PROJECT="$2"; shift 2 ;;
    --region) REGION="$2"; shift 2 ;;
    --bucket) BUCKET="$2"; shift 2 ;;
    --bootstrap-servers) BOOTSTRAP="$2"; shift 2 ;;
    --warehouse) WAREHOUSE="$2"; shift 2 ;;
    --kafka-source) KAFKA_SOURCE="$2"; shift 2 ;;
    --tag) TAG="$2"; shift 2 ;;
    --job-name) JOB_NAME="$2"; shift 2 ;;
    --start-from) START_FROM="$2"; shift 2 ;;
    --artifact-repo) REPO_NAME="$2"; shift 2 ;;
    --build-only) BUILD_ONLY=1; shift ;;
    --update) UPDATE=1; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) usage ;;
    *) echo "unknown option $1" >&2; usage ;;
  esac
done
case "$KAFKA_SOURCE" in python|java) ;; *) echo "--kafka-source must be python or java" >&2; exit 2 ;; esac
[[ -n "$PROJECT" && -n "$BUCKET" ]] || { echo "--project and --bucket are required" >&2; exit 2; }

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
IMAGE="${REGION}-docker.pkg.dev/${PROJECT}/${REPO_NAME}/cx360-${KAFKA_SOURCE}:${TAG}"
TEMPLATE="gs://${BUCKET}/templates/cx360-${KAFKA_SOURCE}-${TAG}.json"

echo "building ${IMAGE} (Kafka source: ${KAFKA_SOURCE})"
if command -v docker >/dev/null 2>&1; then
  docker build -f "${ROOT}/deploy/dataflow/Dockerfile" --build-arg "KAFKA_SOURCE=${KAFKA_SOURCE}" \
    -t "${IMAGE}" "${ROOT}"
  docker push "${IMAGE}"
else  # Cloud Build (no local Docker engine)
  cat > "${ROOT}/.cloudbuild.cx360.yaml" <<YAML
steps:
- name: gcr.io/cloud-builders/docker
  args: [build, -f, deploy/dataflow/Dockerfile, --build-arg, KAFKA_SOURCE=${KAFKA_SOURCE}, -t, ${IMAGE}, .]
images: [${IMAGE}]
YAML
  gcloud builds submit "${ROOT}" --project "${PROJECT}" --config "${ROOT}/.cloudbuild.cx360.yaml"
  rm -f "${ROOT}/.cloudbuild.cx360.yaml"
fi

gcloud dataflow flex-template build "${TEMPLATE}" --project "${PROJECT}" \
  --image "${IMAGE}" --sdk-language PYTHON \
  --metadata-file "${ROOT}/deploy/dataflow/metadata.json"
echo "template: ${TEMPLATE}"
[[ "$BUILD_ONLY" == 1 ]] && exit 0

[[ -n "$BOOTSTRAP" && -n "$WAREHOUSE" ]] || {
  echo "--bootstrap-servers and --warehouse are required to run" >&2; exit 2; }
PARAMS=("bootstrap_servers=${BOOTSTRAP}" "warehouse=${WAREHOUSE}" "kafka_source=${KAFKA_SOURCE}"
        "start_from=${START_FROM}" "sdk_container_image=${IMAGE}" "${EXTRA[@]}")
# gcloud's alternate delimiter (^~^), so values may contain commas (windows=1h,1d).
JOINED="$(IFS='~'; echo "${PARAMS[*]}")"
RUN=(gcloud dataflow flex-template run "${JOB_NAME}" --project "${PROJECT}" --region "${REGION}"
     --template-file-gcs-location "${TEMPLATE}"
     --temp-location "gs://${BUCKET}/tmp" --staging-location "gs://${BUCKET}/staging"
     --enable-streaming-engine --parameters "^~^${JOINED}")
# --update replaces the running job in place, keeping its windows and de-duplication state.
[[ "$UPDATE" == 1 ]] && RUN+=(--update)
"${RUN[@]}"
