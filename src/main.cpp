// deploy-sentinel: deploys a self-modifying production service without killing its agent.
#include "cli.h"

int main(int argc, char** argv) { return sentinel::run_cli(argc, argv); }
