-- moodlens schema before migrations (commit e09d91e, the code of HEAD~1 at the time Alembic came in):
-- the DDL that Base.metadata.create_all emitted for store.py and collections.py. A test fixture: do not edit.

CREATE TABLE analyses (
	id SERIAL NOT NULL,
	video TEXT NOT NULL,
	video_sha256 VARCHAR(64),
	status VARCHAR(16) NOT NULL,
	params JSON NOT NULL,
	models JSON NOT NULL,
	video_info JSON NOT NULL,
	timings JSON NOT NULL,
	frames INTEGER NOT NULL,
	observations INTEGER NOT NULL,
	error TEXT,
	host VARCHAR(255),
	pid INTEGER,
	started_at TIMESTAMP WITH TIME ZONE NOT NULL,
	finished_at TIMESTAMP WITH TIME ZONE,
	PRIMARY KEY (id)
);

CREATE INDEX ix_analyses_status ON analyses (status);

CREATE TABLE collections (
	id SERIAL NOT NULL,
	name VARCHAR(255) NOT NULL,
	created_at TIMESTAMP WITH TIME ZONE NOT NULL,
	PRIMARY KEY (id),
	UNIQUE (name)
);

CREATE TABLE observations (
	id SERIAL NOT NULL,
	analysis_id INTEGER NOT NULL,
	seq VARCHAR(512) NOT NULL,
	person VARCHAR(255) NOT NULL,
	frame INTEGER NOT NULL,
	time_s FLOAT NOT NULL,
	track INTEGER NOT NULL,
	x FLOAT NOT NULL,
	y FLOAT NOT NULL,
	w FLOAT NOT NULL,
	h FLOAT NOT NULL,
	score FLOAT NOT NULL,
	quality FLOAT NOT NULL,
	neutral FLOAT NOT NULL,
	happiness FLOAT NOT NULL,
	surprise FLOAT NOT NULL,
	sadness FLOAT NOT NULL,
	anger FLOAT NOT NULL,
	disgust FLOAT NOT NULL,
	fear FLOAT NOT NULL,
	contempt FLOAT NOT NULL,
	landmarks JSON,
	PRIMARY KEY (id),
	FOREIGN KEY(analysis_id) REFERENCES analyses (id) ON DELETE CASCADE
);

CREATE INDEX ix_observations_analysis_id ON observations (analysis_id);

CREATE INDEX ix_observations_person ON observations (person);

CREATE TABLE persons (
	id SERIAL NOT NULL,
	collection_id INTEGER NOT NULL,
	person VARCHAR(255) NOT NULL,
	created_at TIMESTAMP WITH TIME ZONE NOT NULL,
	PRIMARY KEY (id),
	UNIQUE (collection_id, person),
	FOREIGN KEY(collection_id) REFERENCES collections (id) ON DELETE CASCADE
);

CREATE INDEX ix_persons_collection_id ON persons (collection_id);

CREATE TABLE face_embeddings (
	id SERIAL NOT NULL,
	collection_id INTEGER NOT NULL,
	person_id INTEGER NOT NULL,
	model VARCHAR(64) NOT NULL,
	embedding BYTEA NOT NULL,
	image_sha256 VARCHAR(64) NOT NULL,
	source_path TEXT NOT NULL,
	quality FLOAT NOT NULL,
	face_jpeg BYTEA,
	created_at TIMESTAMP WITH TIME ZONE NOT NULL,
	PRIMARY KEY (id),
	FOREIGN KEY(collection_id) REFERENCES collections (id) ON DELETE CASCADE,
	FOREIGN KEY(person_id) REFERENCES persons (id) ON DELETE CASCADE
);

CREATE INDEX ix_face_embeddings_person_id ON face_embeddings (person_id);

CREATE INDEX ix_face_embeddings_image_sha256 ON face_embeddings (image_sha256);

CREATE INDEX ix_face_embeddings_collection_id ON face_embeddings (collection_id);
